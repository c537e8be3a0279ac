"""The buffer's data and its eviction policy, without locking: `FrameBuffer` owns one
`BufferState` and calls it only while holding its lock.

Time is the frames' own stamp time (sim time for bags): the window and keep_raw_s are measured
against the newest frame's stamp, never the wall clock. Only the pending-region TTL uses the wall
clock, because a dead camera stops stamp time.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .memory import ZERO, ByteCount
from .records import ObjectId, ObjectTokens

NS = 1_000_000_000
KINDS = ("image", "global", "regions", "tokens")


@dataclass(frozen=True)
class BufferConfig:
    window_s: float = 10.0  # room for a short clip (T-k..T) in video describe requests
    max_frames: int = 300  # 10 s at 30 Hz
    max_objects: int = 64  # tracker ids alive at once in a busy scene; LRU beyond that
    stamp_tolerance_s: float = 0.010  # < half a 30 Hz period: a stamp never matches two frames
    max_bytes: int = 512 * 2**20  # images + [576, C] features + masks + tokens, host and device
    keep_raw_s: float = 1.0  # detector regions usually arrive within a few hundred ms of the frame
    pending_region_ttl_s: float = 2.0  # wall time: a region whose frame never comes must not linger
    max_pending_regions: int = 256  # regions ahead of their frame; oldest dropped beyond that
    prefetch_global: bool = True  # encode the newest frame before any region asks: lower latency
    global_min_interval_s: float = 0.0  # prefetch rate limit in stamp time; 0 = as fast as possible
    clock_jump_back_s: float = 1.0  # a frame this much older than the newest = bag loop: reset

    def __post_init__(self) -> None:
        positive = ("window_s", "max_frames", "max_objects", "max_bytes", "max_pending_regions",
                    "pending_region_ttl_s", "clock_jump_back_s")
        non_negative = ("stamp_tolerance_s", "keep_raw_s", "global_min_interval_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"BufferConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"BufferConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def tolerance_ns(self) -> int:
        return round(self.stamp_tolerance_s * NS)

    @property
    def window_ns(self) -> int:
        return round(self.window_s * NS)


class GlobalState(enum.Enum):
    MISSING = "missing"
    IN_FLIGHT = "in_flight"  # claimed by the worker
    READY = "ready"
    FAILED = "failed"  # the worker gave up on this frame
    DROPPED = "dropped"  # raw data released; never computed again


@dataclass
class Region:
    object_id: ObjectId
    stamp_ns: int  # as sent; may differ from the frame's stamp within tolerance
    payload: Any
    size: ByteCount
    arrived_s: float  # wall clock, for the pending TTL
    in_flight: bool = False


@dataclass
class ObjectInfo:
    stamps: set[int] = field(default_factory=set)  # frames holding a region or tokens of it
    pending: int = 0  # regions waiting for their frame
    last_seen_ns: int = 0  # newest region stamp; the LRU key for max_objects


@dataclass(eq=False)
class FrameEntry:
    """One buffered frame. Internal: read it only under the buffer's lock."""

    stamp_ns: int
    image: np.ndarray | None
    image_size: ByteCount = ZERO
    global_payload: Any = None
    global_size: ByteCount = ZERO
    global_state: GlobalState = GlobalState.MISSING
    skipped: bool = False
    regions: dict[ObjectId, Region] = field(default_factory=dict)  # matched, tokens to compute
    tokens: dict[ObjectId, ObjectTokens] = field(default_factory=dict)
    token_sizes: dict[ObjectId, ByteCount] = field(default_factory=dict)

    @property
    def raw_usable(self) -> bool:
        return self.global_state not in (GlobalState.FAILED, GlobalState.DROPPED)

    @property
    def busy(self) -> bool:
        """The worker holds a job on this frame (its global features or a region's tokens)."""
        return self.global_state is GlobalState.IN_FLIGHT or any(
            r.in_flight for r in self.regions.values())

    @property
    def droppable(self) -> bool:
        """Raw data no region waits on (an in-flight job holds its own references anyway)."""
        in_flight = self.global_state is GlobalState.IN_FLIGHT
        return self.raw_usable and not self.regions and not in_flight


class BufferState:
    """Frames, pending regions, the object index and byte totals, kept consistent together.
    Not thread-safe: every method assumes the owner's lock is held."""

    def __init__(self, config: BufferConfig) -> None:
        self.config = config
        self.stamps: list[int] = []  # sorted
        self.frames: dict[int, FrameEntry] = {}
        self.pending: dict[tuple[ObjectId, int], Region] = {}  # insertion = arrival order
        self.objects: dict[ObjectId, ObjectInfo] = {}
        self.bytes: dict[str, ByteCount] = dict.fromkeys(KINDS, ZERO)
        self.epoch = 0  # bumped by reset; results carrying an older epoch are discarded
        self.last_prefetch_ns: int | None = None
        self.count: Counter[str] = Counter()
        self.last_reset_reason: str | None = None

    def total_bytes(self) -> ByteCount:
        return sum(self.bytes.values(), ZERO)

    def add_bytes(self, kind: str, size: ByteCount, sign: int = 1) -> None:
        self.bytes[kind] = self.bytes[kind] + size if sign > 0 else self.bytes[kind] - size

    def nearest(self, stamp_ns: int) -> FrameEntry | None:
        """The frame nearest stamp_ns within tolerance."""
        i = bisect.bisect_left(self.stamps, stamp_ns)
        near = [s for s in self.stamps[max(i - 1, 0):i + 1]
                if abs(s - stamp_ns) <= self.config.tolerance_ns]
        return self.frames[min(near, key=lambda s: abs(s - stamp_ns))] if near else None

    # ---------------------------------------------------------------------- object index
    def touch_object(self, object_id: ObjectId, stamp_ns: int) -> ObjectInfo:
        """Register an object, evicting the least recently seen one beyond max_objects."""
        info = self.objects.get(object_id)
        if info is None:
            if len(self.objects) >= self.config.max_objects:
                self.evict_object(min(self.objects, key=lambda o: self.objects[o].last_seen_ns))
            info = self.objects[object_id] = ObjectInfo(last_seen_ns=stamp_ns)
        info.last_seen_ns = max(info.last_seen_ns, stamp_ns)
        return info

    def evict_object(self, object_id: ObjectId) -> None:
        info = self.objects[object_id]
        for stamp in list(info.stamps):
            e = self.frames[stamp]
            if object_id in e.regions:
                self.drop_region(e, object_id, "regions_evicted")
            if object_id in e.tokens:
                del e.tokens[object_id]
                self.add_bytes("tokens", e.token_sizes.pop(object_id), -1)
        for key in [k for k in self.pending if k[0] == object_id]:
            self.drop_pending(key, "regions_evicted")
        self.objects.pop(object_id, None)
        self.count["objects_evicted"] += 1

    def unlink(self, object_id: ObjectId, stamp_ns: int | None) -> None:
        """Forget that an object appears at stamp_ns (None: one pending region fewer); an object
        with nothing left leaves the index."""
        info = self.objects.get(object_id)
        if info is None:
            return
        if stamp_ns is None:
            info.pending -= 1
        else:
            info.stamps.discard(stamp_ns)
        if not info.stamps and info.pending == 0:
            del self.objects[object_id]

    # --------------------------------------------------------------------------- regions
    def attach_region(self, e: FrameEntry, region: Region) -> None:
        old = e.regions.get(region.object_id)
        if old is not None:  # a re-sent region replaces one whose tokens are not started
            self.add_bytes("regions", old.size, -1)
        self.touch_object(region.object_id, e.stamp_ns).stamps.add(e.stamp_ns)
        e.regions[region.object_id] = region
        self.add_bytes("regions", region.size)

    def drop_region(self, e: FrameEntry, object_id: ObjectId, counter: str) -> None:
        region = e.regions.pop(object_id)
        self.add_bytes("regions", region.size, -1)
        self.count[counter] += 1
        if object_id not in e.tokens:
            self.unlink(object_id, e.stamp_ns)

    def add_pending(self, region: Region) -> None:
        key = (region.object_id, region.stamp_ns)
        if key in self.pending:  # a re-sent region replaces the queued one
            self.drop_pending(key, "", count=False)
        elif len(self.pending) >= self.config.max_pending_regions:
            self.drop_pending(next(iter(self.pending)), "regions_overflowed")
        self.touch_object(region.object_id, region.stamp_ns).pending += 1
        self.pending[key] = region
        self.add_bytes("regions", region.size)

    def drop_pending(self, key: tuple[ObjectId, int], counter: str, count: bool = True) -> None:
        region = self.pending.pop(key)
        self.add_bytes("regions", region.size, -1)
        if count:
            self.count[counter] += 1
        self.unlink(region.object_id, None)

    def match_pending(self, entry: FrameEntry) -> int:
        """Attach pending regions to a new frame; expire those whose frame can no longer come."""
        tol, newest, matched = self.config.tolerance_ns, self.stamps[-1], 0
        for key, region in list(self.pending.items()):
            oid = region.object_id
            if abs(region.stamp_ns - entry.stamp_ns) > tol:
                if region.stamp_ns < newest - tol:  # frames arrive in order: it never came
                    self.drop_pending(key, "regions_expired")
                continue
            if oid in entry.tokens or oid in entry.regions:  # a duplicate of a matched one
                self.drop_pending(key, "", count=False)
                continue
            del self.pending[key]  # moved: bytes unchanged, the object stays registered
            info = self.objects[oid]
            info.pending -= 1
            info.stamps.add(entry.stamp_ns)
            info.last_seen_ns = max(info.last_seen_ns, entry.stamp_ns)
            entry.regions[oid] = region
            matched += 1
        return matched

    def expire_pending(self, now_s: float) -> None:
        ttl = self.config.pending_region_ttl_s
        for key in [k for k, r in self.pending.items() if now_s - r.arrived_s > ttl]:
            self.drop_pending(key, "regions_expired")

    # ---------------------------------------------------------------- frames and eviction
    def insert_frame(self, entry: FrameEntry) -> None:
        bisect.insort(self.stamps, entry.stamp_ns)
        self.frames[entry.stamp_ns] = entry
        self.add_bytes("image", entry.image_size)
        self.count["frames_added"] += 1

    def mark_skipped(self, stamp_ns: int) -> tuple[int, ...]:
        """Frames older than the prefetched one that nobody will encode unless a region asks."""
        skipped = []
        for s in self.stamps[:bisect.bisect_left(self.stamps, stamp_ns)]:
            e = self.frames[s]
            if e.global_state is GlobalState.MISSING and not e.skipped and not e.regions:
                e.skipped = True
                skipped.append(s)
        self.count["frames_skipped"] += len(skipped)
        return tuple(skipped)

    def evict_oldest(self) -> None:
        self.evict(self.stamps[0])

    def evict(self, stamp_ns: int) -> None:
        self.stamps.remove(stamp_ns)
        e = self.frames.pop(stamp_ns)
        self.release_raw(e)
        for oid in list(e.regions):
            self.drop_region(e, oid, "regions_evicted")
        for oid, size in e.token_sizes.items():
            self.add_bytes("tokens", size, -1)
            self.unlink(oid, e.stamp_ns)
        self.count["frames_evicted"] += 1

    def evict_window(self) -> int:
        """Evict frames older than window_s behind the newest, then frames beyond max_frames.

        Over the count, frames without tokens and without work in flight go first (oldest of
        them): under overload the worker lags behind the camera, and evicting the frames it never
        reached keeps the tokens it did compute. Otherwise a worker slower than the count window
        would see every result discarded and never answer."""
        evicted = 0
        while self.stamps and self.stamps[0] < self.stamps[-1] - self.config.window_ns:
            self.evict_oldest()
            evicted += 1
        while len(self.stamps) > self.config.max_frames:
            idle = (s for s in self.stamps[:-1] if not self.frames[s].token_sizes
                    and not self.frames[s].busy)
            self.evict(next(idle, self.stamps[0]))
            evicted += 1
        return evicted

    def release_raw(self, e: FrameEntry, mark: bool = False) -> None:
        """Free a frame's image and global features; `mark` records it as a policy drop. A frame
        whose features were never computed is counted as unencoded: under overload most frames
        go this way, also when the worker is too busy to prefetch (so none is "skipped")."""
        if e.global_state is GlobalState.MISSING and e.image is not None:
            self.count["frames_unencoded"] += 1
        self.add_bytes("image", e.image_size, -1)
        self.add_bytes("global", e.global_size, -1)
        e.image, e.image_size, e.global_payload, e.global_size = None, ZERO, None, ZERO
        if mark:
            e.global_state = GlobalState.DROPPED
            self.count["raw_dropped"] += 1

    def drop_raw(self) -> int:
        """Release image + global features of frames older than keep_raw_s that no region
        needs; their tokens stay until the frame leaves the window."""
        if not self.stamps:
            return 0
        cutoff = self.stamps[-1] - round(self.config.keep_raw_s * NS)
        old = [self.frames[s] for s in self.stamps[:bisect.bisect_left(self.stamps, cutoff)]]
        dropped = [e for e in old if e.droppable]
        for e in dropped:
            self.release_raw(e, mark=True)
        return len(dropped)

    def enforce_bytes(self) -> int:
        """Over max_bytes: first release raw data of old frames, then drop pending regions
        (oldest first: their frame may never come), then evict the oldest frames. Regions
        stamped ahead of the camera must not push out frames that hold tokens, nor grow past the
        bound. The newest frame always stays, so the bound is max_bytes plus at most one frame."""
        limit = self.config.max_bytes
        for s in self.stamps[:-1]:
            if self.total_bytes().total <= limit:
                return 0
            e = self.frames[s]
            if e.droppable and (e.image_size.total or e.global_size.total):
                self.release_raw(e, mark=True)
        while self.pending and self.total_bytes().total > limit:
            self.drop_pending(next(iter(self.pending)), "regions_overflowed")
        evicted = 0
        while self.total_bytes().total > limit and len(self.stamps) > 1:
            self.evict_oldest()
            evicted += 1
        return evicted

    def reset(self, reason: str) -> None:
        """Clear everything; frames and regions lost are counted as evicted."""
        lost = len(self.pending) + sum(len(e.regions) for e in self.frames.values())
        self.count["regions_evicted"] += lost
        self.count["frames_evicted"] += len(self.stamps)
        self.stamps.clear()
        self.frames.clear()
        self.pending.clear()
        self.objects.clear()
        self.bytes = dict.fromkeys(KINDS, ZERO)
        self.last_prefetch_ns = None
        self.epoch += 1
        self.count["resets"] += 1
        self.last_reset_reason = reason
