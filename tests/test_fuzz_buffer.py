"""A hypothesis state machine over FrameBuffer: frames with stamps in the future, duplicated,
reordered or jumping back (bag loop), regions for ids never seen or huge ids, workers that
finish, fail or return stale results, lookups anywhere. After every step the bounds the node
relies on must hold (frames, objects, pending regions, bytes) and the bookkeeping must agree
with a recount from scratch. tests/test_buffer.py has the hand-written cases of each rule.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pixelrefer_ros.buffer import (
    BufferConfig,
    FrameBuffer,
    FrameBufferError,
    GlobalJob,
    RegionStatus,
    TokenJob,
)
from pixelrefer_ros.buffer.memory import ZERO, measure
from tests.test_buffer import FakeClock, recount

S, MS = 1_000_000_000, 1_000_000
CONFIG = BufferConfig(window_s=1.0, max_frames=6, max_objects=3, stamp_tolerance_s=0.01,
                      max_bytes=20_000, keep_raw_s=0.3, pending_region_ttl_s=2.0,
                      max_pending_regions=4, clock_jump_back_s=0.5)
IDS = st.sampled_from([0, 1, 2, 3, 7]) | st.integers(0, 2**32 - 1) | st.text(max_size=3)
STEPS = st.one_of(st.integers(1, 300 * MS), st.integers(-300 * MS, 0),  # in order, reordered
                  st.integers(-5 * S, -S), st.integers(S, 3600 * S),  # bag loop, future
                  st.sampled_from([0, CONFIG.tolerance_ns // 2]))  # duplicate, within tolerance
CASES = {"steps": 0, "machines": 0}
MACHINE_EXAMPLES = 100


def frame_bytes(e) -> int:
    return (e.image_size + e.global_size + sum((r.size for r in e.regions.values()), ZERO)
            + sum(e.token_sizes.values(), ZERO)).total


class BufferMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.clock = FakeClock()
        self.buf = FrameBuffer(CONFIG, clock=self.clock)
        self.newest = 100 * S
        self.claimed: list[GlobalJob | TokenJob] = []
        CASES["machines"] += 1

    @rule(step=STEPS, size=st.integers(0, 9000), absolute=st.sampled_from([None, 0, -S, 1]))
    def add_frame(self, step: int, size: int, absolute: int | None) -> None:
        stamp = self.newest + step if absolute is None else absolute
        result = self.buf.add_frame(stamp, np.zeros(size, np.uint8))
        if result.accepted:
            self.newest = max(self.newest, stamp) if not result.reset_reason else stamp
        assert not result.reset_reason or result.accepted

    @rule(oid=IDS, step=STEPS, size=st.integers(1, 12_000))
    def add_region(self, oid, step: int, size: int) -> None:
        match = self.buf.add_region(oid, self.newest + step, np.ones(size, np.uint8))
        assert match.status is not RegionStatus.REJECTED or (match.code and match.message)

    @rule(max_tokens=st.integers(0, 4), max_globals=st.integers(0, 2),
          focus=st.none() | st.tuples(STEPS, STEPS))
    def claim(self, max_tokens: int, max_globals: int, focus) -> None:
        if focus is not None:
            focus = tuple(sorted(self.newest + f for f in focus))
        plan = self.buf.pending_work(max_globals=max_globals, max_tokens=max_tokens,
                                     focus_ns=focus)
        assert len(plan.token_jobs) <= max_tokens and len(plan.global_jobs) <= max_globals
        self.claimed += [*plan.global_jobs, *plan.token_jobs]

    @rule(data=st.data())
    def finish(self, data) -> None:
        if not self.claimed:
            return
        job = self.claimed.pop(data.draw(st.integers(0, len(self.claimed) - 1)))
        outcome = data.draw(st.sampled_from(["ok", "ok", "fail", "stale"]))
        epoch = job.epoch - 1 if outcome == "stale" else job.epoch
        if outcome == "fail":
            self.buf.fail_job(job)
        elif isinstance(job, GlobalJob):
            self.buf.set_global(job.stamp_ns, torch.zeros(data.draw(st.integers(1, 800))),
                                epoch=epoch)
        else:
            self.buf.set_tokens(job.object_id, job.stamp_ns,
                                torch.zeros(data.draw(st.integers(1, 400))), epoch=epoch)

    @rule(oid=IDS, step=STEPS, length=st.integers(-S, 3 * S), k=st.integers(-1, 5))
    def lookup(self, oid, step: int, length: int, k: int) -> None:
        t = self.newest + step
        for call in (lambda: self.buf.lookup_latest(oid), lambda: self.buf.lookup_at(oid, t),
                     lambda: self.buf.lookup_window(oid, t - length, t, k)):
            try:
                result = call()
            except FrameBufferError as err:
                assert err.message
                continue
            tokens = result if isinstance(result, list) else [result]
            assert tokens and all(x.object_id == oid for x in tokens)
            assert [x.stamp_ns for x in tokens] == sorted({x.stamp_ns for x in tokens})

    @rule(seconds=st.floats(0, 3))
    def wait(self, seconds: float) -> None:
        self.clock.t += seconds

    @invariant()
    def bounded_and_consistent(self) -> None:
        CASES["steps"] += 1
        if not hasattr(self, "buf"):
            return
        st_, s = self.buf.stats(), self.buf._s
        assert st_.frames <= CONFIG.max_frames and st_.objects <= CONFIG.max_objects
        assert st_.pending_regions <= CONFIG.max_pending_regions
        assert s.stamps == sorted(s.frames) and len(s.stamps) == len(set(s.stamps))
        if s.stamps:
            assert s.stamps[-1] - s.stamps[0] <= CONFIG.window_ns
        assert st_.bytes_total == recount(self.buf) >= 0
        assert st_.frames_skipped <= st_.frames_added and st_.frames_unencoded <= st_.frames_added
        # The memory bound: max_bytes, plus at most the newest frame (kept whatever its size).
        newest = frame_bytes(s.frames[s.stamps[-1]]) if s.stamps else 0
        assert st_.bytes_total <= CONFIG.max_bytes + newest, (st_.bytes_total, newest)
        # The object index names exactly the objects with a region, tokens or a pending region.
        named = {oid for e in s.frames.values() for oid in (*e.regions, *e.tokens)}
        named |= {oid for oid, _ in s.pending}
        assert set(s.objects) == named
        for oid, info in s.objects.items():
            assert info.stamps == {st for st, e in s.frames.items()
                                   if oid in e.regions or oid in e.tokens}
            assert info.pending == sum(1 for o, _ in s.pending if o == oid)
        for e in s.frames.values():
            assert e.token_sizes.keys() == e.tokens.keys()
            assert all(measure(t.tokens).total == e.token_sizes[o].total
                       for o, t in e.tokens.items())


TestBufferMachine = BufferMachine.TestCase
TestBufferMachine.settings = settings(
    max_examples=MACHINE_EXAMPLES, stateful_step_count=40, deadline=None, derandomize=True,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_regions_ahead_of_the_camera_never_push_out_tokens():
    """Found by the machine above: regions stamped ahead of every frame (a tracker on another
    clock, a fuzzer) used to evict frames holding tokens and still break the byte bound."""
    b = FrameBuffer(BufferConfig(max_bytes=20_000, max_pending_regions=4,
                                 prefetch_global=False), clock=FakeClock())
    for i in range(3):
        b.add_frame(i * 100 * MS, np.zeros(1000, np.uint8))
        b.add_region(1, i * 100 * MS, np.ones(100, np.uint8))
        b.set_global(i * 100 * MS, torch.zeros(10))
        b.set_tokens(1, i * 100 * MS, torch.zeros(10))
    for k in range(4):
        assert b.add_region(50 + k, 100 * S + k, np.ones(6000, np.uint8)).status \
            is RegionStatus.PENDING
    st_ = b.stats()
    assert (st_.frames, st_.token_sets) == (3, 3) and st_.bytes_total <= 20_000
    assert st_.pending_regions == 3 and st_.regions_overflowed == 1  # oldest dropped
    assert b.lookup_at(1, 0).stamp_ns == 0


def test_zz_report_state_machine_cases(robustness_report):
    """Runs after TestBufferMachine (file order): reports how much it explored."""
    robustness_report(f"fuzz FrameBuffer state machine: {CASES['machines']} runs, "
                      f"{CASES['steps']} checked steps")
    assert CASES["machines"] >= MACHINE_EXAMPLES
