"""The ROS-free frame buffer: eviction, stamp matching, work selection, lookups, errors, memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pixelrefer_ros.buffer import (
    BufferConfig,
    ErrorCode,
    FrameBuffer,
    FrameBufferError,
    InvalidRequestError,
    NoFrameError,
    RegionStatus,
    StampOutOfRangeError,
    TokensNotReadyError,
    UnknownObjectError,
    measure,
    nbytes,
    sample_uniform,
)
from pixelrefer_ros.buffer.memory import ZERO

S, MS = 1_000_000_000, 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def img(n: int = 1000) -> np.ndarray:
    return np.zeros(n, np.uint8)


def buf(clock: FakeClock | None = None, **kw) -> FrameBuffer:
    return FrameBuffer(BufferConfig(**kw), clock=clock or FakeClock())


def ready(b: FrameBuffer, oid, stamp: int, tok: torch.Tensor | None = None) -> None:
    """Region -> global -> tokens for one (object, frame), as the worker would do it."""
    m = b.add_region(oid, stamp, img(10))
    assert m.status is RegionStatus.MATCHED, m
    b.set_global(m.frame_stamp_ns, torch.zeros(4))
    assert b.set_tokens(oid, m.frame_stamp_ns, torch.zeros(2) if tok is None else tok)


def recount(b: FrameBuffer) -> int:
    """Bytes recomputed from scratch, to check the incremental accounting."""
    s, total = b._s, ZERO
    for e in s.frames.values():
        total += measure(e.image) + measure(e.global_payload)
        total += sum((measure(r.payload) for r in e.regions.values()), ZERO)
        total += sum((measure(t.tokens) for t in e.tokens.values()), ZERO)
    return (total + sum((measure(r.payload) for r in s.pending.values()), ZERO)).total


# --------------------------------------------------------------------------------- memory
def test_memory_counts_what_is_kept_alive():
    a = np.zeros((10, 10), np.float32)
    assert nbytes(a) == 400 and nbytes(a[:2]) == 400  # a view keeps its base alive
    t = torch.zeros(100, 8)
    assert nbytes(t) == 3200 and nbytes(t[0]) == 3200 and nbytes((t, t[1:], t)) == 3200
    assert nbytes({"f": torch.zeros(4, dtype=torch.float16), "img": a, "name": "x"}) == 408

    @dataclass
    class Payload:
        feats: torch.Tensor
        extra: tuple

    assert nbytes(Payload(torch.zeros(2), (np.zeros(3, np.uint8), None))) == 11
    assert nbytes(torch.zeros(5, device="meta")) == 0 and nbytes(b"abc") == 3
    with pytest.raises(TypeError, match="cannot size"):
        nbytes(object())
    if torch.cuda.is_available():
        assert measure(torch.zeros(10, device="cuda")).device == 40


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="window_s"):
        BufferConfig(window_s=0)
    with pytest.raises(ValueError, match="keep_raw_s"):
        BufferConfig(keep_raw_s=-1)


# ------------------------------------------------------------------------------- eviction
def test_eviction_by_time():
    b = buf(window_s=1.0, max_frames=1000)
    evicted = sum(b.add_frame(i * 100 * MS, img()).evicted_frames for i in range(31))
    st = b.stats()
    assert st.newest_stamp_ns == 3 * S and st.oldest_stamp_ns == 2 * S
    assert st.frames == 11 and evicted == st.frames_evicted == 20 and st.span_s == 1.0


def test_eviction_by_count():
    b = buf(max_frames=5)
    for i in range(12):
        b.add_frame(i * 10 * MS, img())
    st = b.stats()
    assert st.frames == 5 and st.oldest_stamp_ns == 70 * MS and st.frames_evicted == 7


def test_count_eviction_keeps_frames_with_tokens_under_overload():
    """A worker slower than the camera: frames it never reached go first, so the tokens it
    computed survive (else every result would be discarded and nothing ever answered)."""
    b = buf(max_frames=5, prefetch_global=False)
    b.add_frame(0, img())
    b.add_region(1, 0, img(10))
    ready(b, 1, 0)
    for i in range(1, 12):
        b.add_frame(i * 10 * MS, img())
        b.add_region(1, i * 10 * MS, img(10))
    st = b.stats()
    assert st.frames == 5 and st.oldest_stamp_ns == 0 and st.newest_stamp_ns == 110 * MS
    assert b.lookup_latest(1).stamp_ns == 0
    # a frame with work in flight is not evicted either
    job = b.pending_work(max_globals=1).global_jobs[0]
    for i in range(12, 20):
        b.add_frame(i * 10 * MS, img())
    assert b.set_global(job.stamp_ns, torch.zeros(4), epoch=job.epoch)


def test_eviction_by_bytes_drops_raw_first_then_frames():
    b = buf(max_bytes=3500, keep_raw_s=100.0)
    for i in range(10):
        b.add_frame(i * 10 * MS, img(1000))
    st = b.stats()  # raw of old frames is released first, the frames themselves stay
    assert st.frames == 10 and st.frames_with_image == 3 and st.bytes_total <= 3500
    assert st.raw_dropped == 7 and st.frames_evicted == 0
    b = buf(max_bytes=3500, keep_raw_s=100.0)
    for i in range(10):  # tokens cannot be released: now whole frames go, oldest first
        b.add_frame(i * 10 * MS, None)
        ready(b, 1, i * 10 * MS, torch.zeros(250))
    st = b.stats()
    assert st.bytes_total <= 3500 and st.frames == 3 and st.oldest_stamp_ns == 70 * MS
    assert st.bytes_total == recount(b)


def test_newest_frame_alone_over_budget_is_kept_and_reported():
    b = buf(max_bytes=500)
    b.add_frame(0, img(1000))
    b.add_frame(10 * MS, img(1000))
    st = b.stats()
    assert st.frames == 1 and st.newest_stamp_ns == 10 * MS and st.over_budget


# -------------------------------------------------------------------------- stamp matching
def test_region_after_frame_matches_within_tolerance():
    b = buf(stamp_tolerance_s=0.005)
    b.add_frame(1 * S, img())
    b.add_frame(1 * S + 33 * MS, img())
    m = b.add_region(7, 1 * S + 4 * MS, img(10))
    assert m.status is RegionStatus.MATCHED and m.frame_stamp_ns == 1 * S
    m = b.add_region(7, 1 * S + 30 * MS, img(10))  # nearest frame, 3 ms away
    assert m.status is RegionStatus.MATCHED and m.frame_stamp_ns == 1 * S + 33 * MS
    m = b.add_region(7, 1 * S + 16 * MS, img(10))  # between frames, 16/17 ms from each
    assert m.status is RegionStatus.REJECTED and m.code is ErrorCode.NO_FRAME_AT_STAMP
    m = b.add_region(7, 1 * S - 6 * MS, img(10))
    assert m.status is RegionStatus.REJECTED and m.code is ErrorCode.STAMP_TOO_OLD


def test_region_before_frame_waits_then_matches():
    b = buf(stamp_tolerance_s=0.005)
    b.add_frame(1 * S, img())
    assert b.add_region(3, 1 * S + 100 * MS, img(10)).status is RegionStatus.PENDING
    assert b.stats().pending_regions == 1 and b.stats().objects == 1
    r = b.add_frame(1 * S + 98 * MS, img())
    assert r.matched_regions == 1
    st = b.stats()
    assert st.pending_regions == 0 and st.waiting_regions == 1
    plan = b.pending_work()
    assert [(j.stamp_ns, j.demanded) for j in plan.global_jobs] == [(1 * S + 98 * MS, True)]


def test_pending_regions_expire_and_are_bounded():
    clock = FakeClock()
    b = buf(clock, stamp_tolerance_s=0.005, pending_region_ttl_s=2.0, max_pending_regions=3)
    b.add_frame(0, img())
    for i in range(5):  # regions for five future frames; only the last three are kept
        b.add_region(i, (i + 1) * 100 * MS, img(10))
    st = b.stats()
    assert st.pending_regions == 3 and st.regions_overflowed == 2 and st.objects == 3
    assert b.add_frame(300 * MS, img()).matched_regions == 1  # object 2; nothing for 0 and 1
    b.add_frame(450 * MS, img())  # the frame at 400 ms never came: object 3's region expires
    st = b.stats()
    assert st.pending_regions == 1 and st.regions_expired == 1
    clock.t = 2.5  # object 4's frame never arrives in wall time either
    b.pending_work()
    assert b.stats().pending_regions == 0 and b.stats().regions_expired == 2
    assert b.stats().bytes_regions == 10  # only object 2's matched mask is left


# ------------------------------------------------------------------------- work selection
def test_latest_wins_and_skipped_accounting():
    b = buf()
    for i in range(5):
        b.add_frame(i * 10 * MS, img())
    plan = b.pending_work()
    assert [j.stamp_ns for j in plan.global_jobs] == [40 * MS] and not plan.global_jobs[0].demanded
    assert plan.skipped_stamps == (0, 10 * MS, 20 * MS, 30 * MS)
    assert b.pending_work().empty  # claimed: not handed out twice
    assert b.set_global(40 * MS, torch.zeros(4), epoch=plan.global_jobs[0].epoch)
    for i in range(5, 8):
        b.add_frame(i * 10 * MS, img())
    plan = b.pending_work()
    assert [j.stamp_ns for j in plan.global_jobs] == [70 * MS]
    assert plan.skipped_stamps == (50 * MS, 60 * MS) and b.stats().frames_skipped == 6
    # a late region on a skipped frame turns it into demanded work, ahead of any prefetch
    b.add_region(1, 20 * MS, img(10))
    b.add_frame(80 * MS, img())
    plan = b.pending_work()
    assert [(j.stamp_ns, j.demanded) for j in plan.global_jobs] == [(20 * MS, True)]


def test_frames_that_leave_unencoded_are_counted():
    """Under overload the worker may be too busy with requests to prefetch at all, so nothing
    is "skipped"; frames evicted or dropped without features still show up as unencoded."""
    b = buf(max_frames=3, keep_raw_s=0.05)
    for i in range(5):
        b.add_frame(i * 100 * MS, img())
    st = b.stats()
    assert st.frames_skipped == 0 and st.frames_unencoded == 4  # counted once, not on eviction
    plan = b.pending_work()
    b.set_global(400 * MS, torch.zeros(4), epoch=plan.global_jobs[0].epoch)
    b.add_frame(1 * S, img())  # the encoded frame's raw drop is not "unencoded"
    assert b.stats().frames_unencoded == 4 and b.stats().raw_dropped == st.raw_dropped + 1


def test_prefetch_rate_limit_and_peek():
    b = buf(global_min_interval_s=0.5)
    b.add_frame(0, img())
    assert len(b.pending_work(claim=False).global_jobs) == 1
    assert len(b.pending_work(claim=False).global_jobs) == 1  # a peek claims nothing
    assert b.pending_work().global_jobs[0].stamp_ns == 0
    b.add_frame(400 * MS, img())
    assert b.pending_work().empty  # 0.4 s since the last prefetch < 0.5 s
    b.add_frame(500 * MS, img())
    assert b.pending_work().global_jobs[0].stamp_ns == 500 * MS


def test_token_jobs_newest_first_bounded_and_claimed():
    b = buf(prefetch_global=False)
    for i in range(3):
        b.add_frame(i * 10 * MS, img())
        b.set_global(i * 10 * MS, torch.zeros(4))
        for oid in (1, 2):
            b.add_region(oid, i * 10 * MS, img(10))
    plan = b.pending_work(max_tokens=4)
    assert [(j.stamp_ns, j.object_id) for j in plan.token_jobs] == [
        (20 * MS, 1), (20 * MS, 2), (10 * MS, 1), (10 * MS, 2)]
    assert plan.token_jobs[0].global_payload is not None and plan.token_jobs[0].image is not None
    assert [(j.stamp_ns, j.object_id) for j in b.pending_work().token_jobs] == [(0, 1), (0, 2)]
    assert b.pending_work().empty
    # duplicates: in flight or done, the same (object, frame) is not computed twice
    assert b.add_region(1, 0, img(10)).status is RegionStatus.DUPLICATE
    assert b.set_tokens(1, 0, torch.zeros(2)) and not b.set_tokens(1, 0, torch.zeros(2))
    assert b.add_region(1, 0, img(10)).status is RegionStatus.DUPLICATE
    assert b.stats().results_discarded == 1


def test_focus_puts_a_waiting_requests_frames_first():
    """A request for an old frame must not starve behind newer frames (under load the worker
    never catches up with the newest frames)."""
    b = buf(prefetch_global=False)
    for i in range(4):
        b.add_frame(i * 10 * MS, img())
        b.add_region(1, i * 10 * MS, img(10))
    plan = b.pending_work(max_globals=1, focus_ns=(5 * MS, 15 * MS))
    assert [j.stamp_ns for j in plan.global_jobs] == [10 * MS]  # not the newest (30 ms)
    b.set_global(10 * MS, torch.zeros(4))
    for stamp in (0, 20 * MS, 30 * MS):
        b.set_global(stamp, torch.zeros(4))
    plan = b.pending_work(max_tokens=1, focus_ns=(5 * MS, 15 * MS))
    assert [(j.stamp_ns, j.object_id) for j in plan.token_jobs] == [(10 * MS, 1)]
    # without a focus: newest first again
    assert [j.stamp_ns for j in b.pending_work(max_tokens=1).token_jobs] == [30 * MS]


def test_failed_jobs_are_not_retried():
    b = buf(prefetch_global=False)
    b.add_frame(0, img())
    b.add_region(1, 0, img(10))
    b.fail_job(b.pending_work().global_jobs[0])
    assert b.pending_work().empty and b.stats().waiting_regions == 0
    assert b.add_region(2, 0, img(10)).code is ErrorCode.RAW_DROPPED
    b.add_frame(10 * MS, img())
    b.set_global(10 * MS, torch.zeros(4))
    b.add_region(1, 10 * MS, img(10))
    b.fail_job(b.pending_work().token_jobs[0])
    st = b.stats()
    assert b.pending_work().empty and st.jobs_failed == 2 and st.objects == 0


# -------------------------------------------------------------------------------- lookups
def test_sample_uniform_properties():
    for n in range(0, 40):
        for k in range(1, 12):
            idx = sample_uniform(n, k)
            assert len(idx) == min(n, k) and idx == sorted(set(idx))
            if n:
                assert idx[-1] == n - 1 and all(0 <= i < n for i in idx)
            if n > k >= 2:
                gaps = np.diff(idx)
                assert idx[0] == 0 and gaps.max() - gaps.min() <= 1
    assert sample_uniform(10, 4) == [0, 3, 6, 9] and sample_uniform(10, 1) == [9]


def test_window_lookup_samples_in_order_with_newest():
    b = buf()
    for i in range(10):
        b.add_frame(i * 100 * MS, img())
        ready(b, "car", i * 100 * MS, torch.full((2,), float(i)))
    got = b.lookup_window("car", 0, 900 * MS, 4)
    assert [t.stamp_ns // (100 * MS) for t in got] == [0, 3, 6, 9]
    assert [int(t.tokens[0]) for t in got] == [0, 3, 6, 9]
    got = b.lookup_window("car", 200 * MS, 500 * MS, 3)
    assert [t.stamp_ns // (100 * MS) for t in got] == [2, 4, 5]  # includes the window's newest
    assert len(b.lookup_window("car", 0, 900 * MS, 50)) == 10
    assert b.lookup_latest("car").stamp_ns == 900 * MS
    assert b.lookup_at("car", 505 * MS).stamp_ns == 500 * MS


def test_lookup_at_picks_the_nearest_frame():
    b = buf(stamp_tolerance_s=0.06)
    for i in range(3):
        b.add_frame(i * 50 * MS, img())
        b.add_region(1, i * 50 * MS, img(10))
        b.set_global(i * 50 * MS, torch.zeros(4))
        b.set_tokens(1, i * 50 * MS, torch.zeros(2))
    assert b.lookup_at(1, 40 * MS).stamp_ns == 50 * MS
    assert b.lookup_at(1, 20 * MS).stamp_ns == 0


def test_error_codes():
    b = buf(stamp_tolerance_s=0.005, window_s=5.0)

    def code(fn, *args) -> ErrorCode:
        with pytest.raises(FrameBufferError) as err:
            fn(*args)
        assert err.value.code.name in str(err.value)
        return err.value.code

    assert code(b.lookup_latest, 1) is ErrorCode.EMPTY_BUFFER
    for i in range(3):
        b.add_frame(1 * S + i * 100 * MS, img())
    ready(b, 1, 1 * S)
    b.add_region(2, 1 * S + 100 * MS, img(10))  # matched, tokens not computed
    b.add_region(3, 1 * S + 200 * MS, img(10))
    ready(b, 3, 1 * S + 200 * MS)
    assert code(b.lookup_latest, 9) is ErrorCode.UNKNOWN_OBJECT
    assert code(b.lookup_latest, 2) is ErrorCode.TOKENS_NOT_READY
    assert code(b.lookup_at, 1, 0) is ErrorCode.STAMP_TOO_OLD
    assert code(b.lookup_at, 1, 2 * S) is ErrorCode.STAMP_IN_FUTURE
    assert code(b.lookup_at, 1, 1 * S + 50 * MS) is ErrorCode.NO_FRAME_AT_STAMP
    assert code(b.lookup_at, 1, 1 * S + 100 * MS) is ErrorCode.OBJECT_NOT_IN_FRAME
    assert code(b.lookup_at, 2, 1 * S + 100 * MS) is ErrorCode.TOKENS_NOT_READY
    assert code(b.lookup_window, 3, 1 * S, 1 * S + 100 * MS, 4) is ErrorCode.NO_FRAME_IN_WINDOW
    assert code(b.lookup_window, 2, 1 * S, 2 * S, 4) is ErrorCode.TOKENS_NOT_READY
    assert code(b.lookup_window, 1, 2 * S, 1 * S, 4) is ErrorCode.INVALID_REQUEST
    assert code(b.lookup_window, 1, 1 * S, 2 * S, 0) is ErrorCode.INVALID_REQUEST
    assert code(b.lookup_window, 1, 0, 900 * MS, 4) is ErrorCode.STAMP_TOO_OLD
    # exception families, so the node can catch broadly or read .code
    with pytest.raises(UnknownObjectError, match="no region for object 9"):
        b.lookup_at(9, 1 * S)
    with pytest.raises(StampOutOfRangeError):
        b.lookup_at(1, 3 * S)
    with pytest.raises(InvalidRequestError):
        b.lookup_window(1, 1, 0, 1)
    with pytest.raises(NoFrameError):
        b.lookup_at(1, 1 * S + 50 * MS)
    with pytest.raises(TokensNotReadyError, match="1 region"):
        b.lookup_latest(2)


def test_lookup_waits_for_the_worker():
    b = buf()
    b.add_frame(0, img())
    b.add_region(1, 0, img(10))
    b.set_global(0, torch.zeros(4))
    t0 = time.monotonic()
    with pytest.raises(TokensNotReadyError):
        b.lookup_latest(1, timeout_s=0.05)
    assert 0.04 < time.monotonic() - t0 < 1.0
    timer = threading.Timer(0.05, b.set_tokens, (1, 0, torch.zeros(2)))
    timer.start()
    assert b.lookup_latest(1, timeout_s=2.0).stamp_ns == 0
    timer.join()


# ------------------------------------------------------------------ resets and raw policy
def test_backward_clock_jump_resets_cleanly():
    b = buf(clock_jump_back_s=1.0)
    for i in range(10):
        b.add_frame(100 * S + i * 100 * MS, img())
    ready(b, 1, 100 * S)
    b.add_region(2, 101 * S, img(10))  # pending, from the old timeline
    job = b.pending_work().global_jobs[0]
    assert b.add_frame(100 * S + 500 * MS + 1, img()).reset_reason is None  # small reorder
    r = b.add_frame(100 * S + 900 * MS - 2 * S, img())
    assert r.accepted and "clock jumped back" in r.reset_reason
    st = b.stats()
    assert (st.frames, st.objects, st.pending_regions, st.resets, st.epoch) == (1, 0, 0, 1, 1)
    assert st.bytes_total == 1000 and st.last_reset_reason == r.reset_reason
    b.add_frame(job.stamp_ns, img())  # the new timeline reaches the stale job's stamp
    assert not b.set_global(job.stamp_ns, torch.zeros(4), epoch=job.epoch)
    with pytest.raises(UnknownObjectError):
        b.lookup_latest(1)


def test_raw_dropped_tokens_kept():
    b = buf(keep_raw_s=0.5, prefetch_global=False)
    b.add_frame(0, img())
    ready(b, 1, 0)
    b.add_frame(100 * MS, img())
    b.add_region(2, 100 * MS, img(10))  # waiting: its frame keeps raw data past keep_raw_s
    b.add_frame(1 * S, img())
    f0, f1 = b._s.frames[0], b._s.frames[100 * MS]
    assert f0.image is None and f0.global_payload is None and f1.image is not None
    assert b.lookup_latest(1).stamp_ns == 0 and b.stats().raw_dropped == 1
    m = b.add_region(3, 0, img(10))  # too late: nothing left to crop or infuse
    assert m.status is RegionStatus.REJECTED and m.code is ErrorCode.RAW_DROPPED
    b.set_global(100 * MS, torch.zeros(4))
    assert b.set_tokens(2, 100 * MS, torch.zeros(2))
    assert b._s.frames[100 * MS].image is None and b.stats().bytes_total == recount(b)


def test_max_objects_evicts_least_recently_seen():
    b = buf(max_objects=2)
    for i, oid in enumerate(("a", "b", "c")):
        b.add_frame(i * 100 * MS, img())
        ready(b, oid, i * 100 * MS)
    st = b.stats()
    assert st.objects == 2 and st.objects_evicted == 1 and st.token_sets == 2
    with pytest.raises(UnknownObjectError):
        b.lookup_latest("a")
    assert b.lookup_latest("c").stamp_ns == 200 * MS


# ----------------------------------------------------------------------------- stats
def test_stats_byte_accuracy():
    b = buf(prefetch_global=False)
    b.add_frame(1 * S, img(1000))
    b.add_frame(2 * S, img(500))
    b.add_region(1, 1 * S, img(100))
    b.add_region(2, 3 * S, img(64))  # pending
    b.set_global(1 * S, torch.zeros(576, 8))
    b.set_tokens(1, 1 * S, torch.zeros(32, 16))
    st = b.stats(now_ns=2 * S + 250 * MS)
    assert (st.bytes_image, st.bytes_global, st.bytes_regions, st.bytes_tokens) == (
        1500, 576 * 8 * 4, 64, 32 * 16 * 4)
    assert st.bytes_total == 1500 + 18432 + 64 + 2048 == recount(b) and st.bytes_device == 0
    assert (st.frames, st.frames_with_global, st.objects, st.token_sets) == (2, 1, 2, 1)
    assert (st.pending_regions, st.waiting_regions) == (1, 0)
    assert st.newest_age_s == 0.25 and st.span_s == 1.0


# ----------------------------------------------------------------------------- stress
def test_concurrent_producers_worker_and_readers():
    cfg = dict(window_s=0.5, max_frames=20, max_objects=5, max_pending_regions=8,
               max_bytes=6_000, keep_raw_s=0.05, stamp_tolerance_s=0.001)
    b = FrameBuffer(BufferConfig(**cfg))
    stop, errors, sizes = threading.Event(), [], []
    done = {"tokens": 0, "lookups": 0}

    def guard(fn):
        def run():
            try:
                fn()
            except Exception as exc:  # surfaced by the assert below
                errors.append(exc)
        return run

    def camera():
        t = 0
        while not stop.is_set():
            t += 10 * MS
            b.add_frame(t if t % (3 * S) else 0, img(800))  # a bag loop every 3 s of stamps
            i = t // (10 * MS)
            b.add_region(i % 7, t + (20 * MS if i % 3 == 0 else 0), img(50))  # some ahead

    def worker():
        while not stop.is_set():
            plan = b.pending_work(max_tokens=3)
            for j in plan.global_jobs:
                b.set_global(j.stamp_ns, torch.zeros(100), epoch=j.epoch)
            for j in plan.token_jobs:
                done["tokens"] += b.set_tokens(j.object_id, j.stamp_ns, torch.zeros(8),
                                               epoch=j.epoch)

    def reader():
        while not stop.is_set():
            for oid in range(7):
                try:
                    b.lookup_window(oid, 0, 10**12, 4)
                    b.lookup_latest(oid, timeout_s=0.001)
                    done["lookups"] += 1
                except FrameBufferError:
                    pass
            st = b.stats()
            sizes.append((st.frames, st.objects, st.pending_regions, st.bytes_total))

    threads = [threading.Thread(target=guard(f)) for f in (camera, worker, reader, reader)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert done["tokens"] > 0 and done["lookups"] > 0 and sizes
    assert max(s[0] for s in sizes) <= 20 and max(s[1] for s in sizes) <= 5
    assert max(s[2] for s in sizes) <= 8
    assert all(s[3] <= 6_000 or s[0] == 1 for s in sizes)  # only a lone newest frame may be over
    st = b.stats()
    assert st.bytes_total == recount(b) and st.resets >= 1 and st.frames_evicted > 0
