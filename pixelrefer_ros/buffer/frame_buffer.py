"""Rolling per-camera buffer: frames by stamp, their global features, and infused object tokens
per (object, frame). Policy only: the model worker pulls jobs from `pending_work`, runs them
without the lock, and hands results back with `set_global` / `set_tokens`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from .memory import measure
from .records import (
    AddFrameResult,
    BufferStats,
    ErrorCode,
    FrameBufferError,
    GlobalJob,
    ObjectId,
    ObjectTokens,
    RegionMatch,
    RegionStatus,
    TokenJob,
    WorkPlan,
    make_error,
)
from .state import NS, BufferConfig, BufferState, FrameEntry, GlobalState, ObjectInfo, Region

__all__ = ["BufferConfig", "FrameBuffer", "FrameEntry", "GlobalState", "sample_uniform"]

_WAITABLE = (ErrorCode.TOKENS_NOT_READY, ErrorCode.STAMP_IN_FUTURE)  # may resolve by themselves
T = TypeVar("T")


def sample_uniform(n: int, k: int) -> list[int]:
    """k of range(n), evenly spread by index, in order, always ending with n - 1 (the newest)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n - 1]
    # step (n-1)/(k-1) > 1, so rounded positions are strictly increasing and never repeat
    return [(i * (n - 1) + (k - 1) // 2) // (k - 1) for i in range(k)]


class FrameBuffer:
    """Frames of ONE camera; the node keeps one per camera."""

    def __init__(self, config: BufferConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BufferConfig()
        self._clock = clock  # wall clock for the pending TTL; injectable for tests
        # Who runs in parallel: the image and region subscription callbacks (add_frame,
        # add_region), the describe service (lookup_*), the diagnostics timer (stats) and the one
        # model worker thread (pending_work, set_*, fail_job), under a MultiThreadedExecutor.
        # Every method holds this lock for bookkeeping only: payload sizes and the clock are read
        # before taking it, and model work runs between pending_work and set_* without it.
        self._lock = threading.Lock()
        self._updated = threading.Condition(self._lock)  # wakes lookups waiting on the worker
        self._s = BufferState(self.config)

    # ----------------------------------------------------------------- producers (callbacks)
    def add_frame(self, stamp_ns: int, image: np.ndarray | None = None) -> AddFrameResult:
        """Buffer a frame (the array is kept, not copied), attach pending regions to it, then
        evict by time, count and bytes. A big step back in stamps resets the buffer first."""
        size, now = measure(image), self._clock()
        cfg, s = self.config, self._s
        with self._lock:
            reset_reason = None
            if s.stamps and stamp_ns < s.stamps[-1] - round(cfg.clock_jump_back_s * NS):
                reset_reason = (f"clock jumped back {(s.stamps[-1] - stamp_ns) / NS:.3f} s "
                                f"(stamp {stamp_ns} after {s.stamps[-1]}); buffer cleared")
                s.reset(reset_reason)
                self._updated.notify_all()
            if stamp_ns in s.frames or (s.stamps and stamp_ns < s.stamps[-1] - cfg.window_ns):
                return AddFrameResult(stamp_ns, accepted=False, reset_reason=reset_reason)
            entry = FrameEntry(stamp_ns, image, size)
            s.insert_frame(entry)
            matched = s.match_pending(entry)
            s.expire_pending(now)
            evicted = s.evict_window()
            s.drop_raw()
            evicted += s.enforce_bytes()
            self._updated.notify_all()
            return AddFrameResult(stamp_ns, True, reset_reason, evicted, matched)

    def add_region(self, object_id: ObjectId, stamp_ns: int, region: Any) -> RegionMatch:
        """Match a region prompt to the nearest frame within tolerance, or keep it pending until
        its frame arrives. A re-sent region replaces one whose tokens are not started yet."""
        size, now = measure(region), self._clock()
        s, tol = self._s, self.config.tolerance_ns
        with self._lock:
            s.expire_pending(now)
            entry = s.nearest(stamp_ns)
            if entry is not None:
                old = entry.regions.get(object_id)
                if object_id in entry.tokens or (old is not None and old.in_flight):
                    return RegionMatch(RegionStatus.DUPLICATE, entry.stamp_ns)
                if not entry.raw_usable:
                    return RegionMatch(RegionStatus.REJECTED, code=ErrorCode.RAW_DROPPED, message=(
                        f"frame {entry.stamp_ns} has no image/features left "
                        f"({entry.global_state.value}); raise keep_raw_s"))
                s.attach_region(entry, Region(object_id, stamp_ns, region, size, now))
                s.enforce_bytes()
                return RegionMatch(RegionStatus.MATCHED, entry.stamp_ns)
            if not s.stamps or stamp_ns > s.stamps[-1] + tol:
                s.add_pending(Region(object_id, stamp_ns, region, size, now))
                s.enforce_bytes()
                return RegionMatch(RegionStatus.PENDING)
            code = ErrorCode.STAMP_TOO_OLD if stamp_ns < s.stamps[0] - tol \
                else ErrorCode.NO_FRAME_AT_STAMP
            return RegionMatch(RegionStatus.REJECTED, code=code, message=self._range_msg(stamp_ns))

    def reset(self, reason: str = "requested") -> None:
        """Drop everything (e.g. on a clock jump the node sees first); results of jobs handed
        out before are discarded because the epoch changes."""
        with self._lock:
            self._s.reset(reason)
            self._updated.notify_all()

    # ------------------------------------------------------------------------ model worker
    def pending_work(self, max_globals: int = 1, max_tokens: int = 4, claim: bool = True,
                     focus_ns: tuple[int, int] | None = None) -> WorkPlan:
        """Newest first: token jobs whose frame is encoded, then frames a region waits on, then
        (latest wins) the newest frame as a prefetch; older unencoded frames count as skipped.
        Frames with stamps inside `focus_ns` (t0, t1) come before all others: a request waiting
        for an older frame's tokens must not starve behind a stream of newer frames.
        Claimed jobs are not handed out again until completed or failed."""
        now, s = self._clock(), self._s
        with self._lock:
            s.expire_pending(now)
            tokens: list[TokenJob] = []
            globals_: list[GlobalJob] = []
            order = list(reversed(s.stamps))
            if focus_ns is not None:
                t0, t1 = focus_ns
                order.sort(key=lambda stamp: not t0 <= stamp <= t1)  # stable: newest first
            for stamp in order:
                e = s.frames[stamp]
                for oid, r in e.regions.items():
                    if len(tokens) < max_tokens and e.global_state is GlobalState.READY \
                            and not r.in_flight:
                        tokens.append(TokenJob(oid, stamp, r.payload, e.image, e.global_payload,
                                               s.epoch))
                        r.in_flight = claim
                if e.regions and e.global_state is GlobalState.MISSING \
                        and len(globals_) < max_globals:
                    globals_.append(GlobalJob(stamp, e.image, s.epoch, demanded=True))
                    e.global_state = GlobalState.IN_FLIGHT if claim else e.global_state
            skipped: tuple[int, ...] = ()
            if self.config.prefetch_global and s.stamps and len(globals_) < max_globals:
                newest = s.frames[s.stamps[-1]]
                due = s.last_prefetch_ns is None or newest.stamp_ns - s.last_prefetch_ns \
                    >= round(self.config.global_min_interval_s * NS)
                if newest.global_state is GlobalState.MISSING and due:
                    globals_.append(GlobalJob(newest.stamp_ns, newest.image, s.epoch, False))
                    if claim:
                        newest.global_state = GlobalState.IN_FLIGHT
                        s.last_prefetch_ns = newest.stamp_ns
                        skipped = s.mark_skipped(newest.stamp_ns)
            return WorkPlan(tuple(globals_), tuple(tokens), skipped)

    def set_global(self, stamp_ns: int, payload: Any, *, epoch: int | None = None) -> bool:
        """Store a frame's global features; False (and counted) if the frame is gone."""
        size, s = measure(payload), self._s
        with self._lock:
            e = s.frames.get(stamp_ns)
            if e is None or (epoch is not None and epoch != s.epoch) \
                    or e.global_state in (GlobalState.READY, GlobalState.DROPPED):
                s.count["results_discarded"] += 1
                return False
            e.global_payload, e.global_size, e.global_state = payload, size, GlobalState.READY
            s.add_bytes("global", size)
            s.enforce_bytes()
            self._updated.notify_all()
            return True

    def set_tokens(self, object_id: ObjectId, stamp_ns: int, tokens: Any, *,
                   epoch: int | None = None) -> bool:
        """Keep an object's tokens for a frame (its region payload is released); False (and
        counted) if the frame is gone or the tokens exist already."""
        size, s = measure(tokens), self._s
        with self._lock:
            e = s.frames.get(stamp_ns)
            if e is None or (epoch is not None and epoch != s.epoch) or object_id in e.tokens:
                s.count["results_discarded"] += 1
                return False
            region = e.regions.pop(object_id, None)
            if region is not None:
                s.add_bytes("regions", region.size, -1)
            s.touch_object(object_id, stamp_ns).stamps.add(stamp_ns)
            e.tokens[object_id] = ObjectTokens(object_id, stamp_ns, tokens, size.total)
            e.token_sizes[object_id] = size
            s.add_bytes("tokens", size)
            s.drop_raw()
            s.enforce_bytes()
            self._updated.notify_all()
            return True

    def fail_job(self, job: GlobalJob | TokenJob) -> None:
        """The worker could not run a job: drop it (and regions waiting on a failed frame) so a
        bad input is not retried forever."""
        s = self._s
        with self._lock:
            e = s.frames.get(job.stamp_ns)
            if e is None or job.epoch != s.epoch:
                return
            s.count["jobs_failed"] += 1
            if isinstance(job, GlobalJob):
                e.global_state = GlobalState.FAILED
                for oid in list(e.regions):
                    s.drop_region(e, oid, "regions_evicted")
            elif job.object_id in e.regions:
                s.drop_region(e, job.object_id, "regions_evicted")
            self._updated.notify_all()

    def drop_raw(self) -> int:
        """Apply the raw-data policy now (it also runs on every add_frame and set_tokens)."""
        with self._lock:
            return self._s.drop_raw()

    # ------------------------------------------------------------------- describe service
    def lookup_latest(self, object_id: ObjectId, timeout_s: float = 0.0) -> ObjectTokens:
        """The object's newest ready tokens (check `.stamp_ns` for freshness)."""
        def query() -> ObjectTokens:
            info = self._object(object_id)
            ready = [st for st in info.stamps if object_id in self._s.frames[st].tokens]
            if not ready:
                raise self._not_ready(object_id, info)
            return self._s.frames[max(ready)].tokens[object_id]
        return self._answer(query, timeout_s)

    def lookup_at(self, object_id: ObjectId, stamp_ns: int,
                  timeout_s: float = 0.0) -> ObjectTokens:
        """Tokens at the frame nearest `stamp_ns` within tolerance."""
        tol, frames = self.config.tolerance_ns, self._s.frames

        def query() -> ObjectTokens:
            info = self._object(object_id)
            self._check_range(stamp_ns, stamp_ns)
            near = [st for st in info.stamps if abs(st - stamp_ns) <= tol]
            if not near:
                code = ErrorCode.NO_FRAME_AT_STAMP if self._s.nearest(stamp_ns) is None \
                    else ErrorCode.OBJECT_NOT_IN_FRAME
                raise make_error(code, f"object {object_id!r}: " + self._range_msg(stamp_ns))
            ready = [st for st in near if object_id in frames[st].tokens]
            if not ready:
                raise self._not_ready(object_id, info)
            return frames[min(ready, key=lambda st: abs(st - stamp_ns))].tokens[object_id]
        return self._answer(query, timeout_s)

    def lookup_window(self, object_id: ObjectId, t0_ns: int, t1_ns: int, max_frames: int,
                      timeout_s: float = 0.0) -> list[ObjectTokens]:
        """Up to max_frames ready tokens in [t0, t1] (tolerance added on both ends), spread
        evenly by index, in time order, always including the newest in the window."""
        if t1_ns < t0_ns or max_frames < 1:
            raise make_error(ErrorCode.INVALID_REQUEST, f"need t0 <= t1 and max_frames >= 1, "
                             f"got t0={t0_ns}, t1={t1_ns}, max_frames={max_frames}")
        tol, frames = self.config.tolerance_ns, self._s.frames

        def query() -> list[ObjectTokens]:
            info = self._object(object_id)
            self._check_range(t0_ns, t1_ns)
            inside = sorted(st for st in info.stamps if t0_ns - tol <= st <= t1_ns + tol)
            ready = [st for st in inside if object_id in frames[st].tokens]
            if not ready and inside:
                raise self._not_ready(object_id, info)
            if not ready:
                raise make_error(ErrorCode.NO_FRAME_IN_WINDOW,
                                 f"object {object_id!r} has no frame in [{t0_ns}, {t1_ns}]")
            return [frames[ready[i]].tokens[object_id]
                    for i in sample_uniform(len(ready), max_frames)]
        return self._answer(query, timeout_s)

    def stats(self, now_ns: int | None = None) -> BufferStats:
        """A consistent snapshot; `now_ns` (the node's clock) fills in the newest frame's age."""
        s = self._s
        with self._lock:
            frames = [s.frames[st] for st in s.stamps]
            total, c = s.total_bytes(), s.count
            oldest = s.stamps[0] if s.stamps else None
            newest = s.stamps[-1] if s.stamps else None
            return BufferStats(
                frames=len(frames),
                frames_with_image=sum(e.image is not None for e in frames),
                frames_with_global=sum(e.global_state is GlobalState.READY for e in frames),
                objects=len(s.objects),
                token_sets=sum(len(e.tokens) for e in frames),
                waiting_regions=sum(len(e.regions) for e in frames),
                pending_regions=len(s.pending),
                bytes_image=s.bytes["image"].total, bytes_global=s.bytes["global"].total,
                bytes_regions=s.bytes["regions"].total, bytes_tokens=s.bytes["tokens"].total,
                bytes_total=total.total, bytes_device=total.device,
                max_bytes=self.config.max_bytes, over_budget=total.total > self.config.max_bytes,
                oldest_stamp_ns=oldest, newest_stamp_ns=newest,
                span_s=0.0 if newest is None or oldest is None else (newest - oldest) / NS,
                newest_age_s=None if now_ns is None or newest is None else (now_ns - newest) / NS,
                epoch=s.epoch, frames_added=c["frames_added"],
                frames_evicted=c["frames_evicted"], frames_skipped=c["frames_skipped"],
                frames_unencoded=c["frames_unencoded"],
                raw_dropped=c["raw_dropped"], objects_evicted=c["objects_evicted"],
                regions_expired=c["regions_expired"], regions_overflowed=c["regions_overflowed"],
                regions_evicted=c["regions_evicted"], jobs_failed=c["jobs_failed"],
                results_discarded=c["results_discarded"], resets=c["resets"],
                last_reset_reason=s.last_reset_reason)

    # ------------------------------------------------------------ lookup helpers (lock held)
    def _answer(self, query: Callable[[], T], timeout_s: float) -> T:
        """Run a lookup under the lock; on a waitable error, wait for the worker or the next
        frame until timeout_s. Checking and waiting under one lock means no missed wake-up."""
        deadline = time.monotonic() + timeout_s
        with self._updated:
            while True:
                try:
                    return query()
                except FrameBufferError as err:
                    remaining = deadline - time.monotonic()
                    if err.code not in _WAITABLE or remaining <= 0:
                        raise
                    self._updated.wait(remaining)

    def _object(self, object_id: ObjectId) -> ObjectInfo:
        if not self._s.stamps:
            raise make_error(ErrorCode.EMPTY_BUFFER, "no frame buffered yet (or since a reset)")
        info = self._s.objects.get(object_id)
        if info is None:
            known = sorted(map(str, self._s.objects))[:10]
            raise make_error(ErrorCode.UNKNOWN_OBJECT,
                             f"no region for object {object_id!r} in the buffer (last "
                             f"{self.config.window_s} s); known ids: {known}")
        return info

    def _not_ready(self, object_id: ObjectId, info: ObjectInfo) -> FrameBufferError:
        waiting = sum(object_id in self._s.frames[st].regions for st in info.stamps)
        return make_error(ErrorCode.TOKENS_NOT_READY,
                          f"object {object_id!r}: {waiting} region(s) waiting for the model "
                          f"worker, {info.pending} waiting for their frame")

    def _check_range(self, t0_ns: int, t1_ns: int) -> None:
        tol = self.config.tolerance_ns
        if t1_ns < self._s.stamps[0] - tol:
            raise make_error(ErrorCode.STAMP_TOO_OLD, self._range_msg(t1_ns))
        if t0_ns > self._s.stamps[-1] + tol:
            raise make_error(ErrorCode.STAMP_IN_FUTURE, self._range_msg(t0_ns))

    def _range_msg(self, stamp_ns: int) -> str:
        return (f"stamp {stamp_ns} vs buffered frames [{self._s.stamps[0]}, {self._s.stamps[-1]}]"
                f" (tolerance {self.config.stamp_tolerance_s} s, window {self.config.window_s} s)")
