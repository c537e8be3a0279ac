"""What the frame buffer hands out: error codes, lookup results, work items and statistics.

All records are frozen so that they can cross threads after the buffer's lock is released.
Tensors inside them are shared, not copied: by contract nobody writes into a payload once it has
been given to the buffer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ObjectId = int | str  # tracker ids are ints; the Region.msg proposal carries a string id


class ErrorCode(enum.Enum):
    """Why a lookup failed; the node copies `name` and the message into the service response."""

    INVALID_REQUEST = "invalid_request"  # t0 > t1, max_frames < 1
    EMPTY_BUFFER = "empty_buffer"  # no frame has arrived (or all were reset away)
    UNKNOWN_OBJECT = "unknown_object"  # no region for this id in the buffer
    STAMP_TOO_OLD = "stamp_too_old"  # before the oldest buffered frame
    STAMP_IN_FUTURE = "stamp_in_future"  # after the newest buffered frame
    NO_FRAME_AT_STAMP = "no_frame_at_stamp"  # inside the span, no frame within tolerance
    OBJECT_NOT_IN_FRAME = "object_not_in_frame"  # a frame matches but has no region for this id
    NO_FRAME_IN_WINDOW = "no_frame_in_window"  # the object has no frame in [t0, t1]
    TOKENS_NOT_READY = "tokens_not_ready"  # region matched, the worker has not finished it yet
    RAW_DROPPED = "raw_dropped"  # the frame's image/features are gone; tokens cannot be made


class FrameBufferError(Exception):
    """A lookup that cannot be answered. Named apart from the builtin `BufferError` (which is
    about memoryviews) so that `except BufferError` elsewhere never catches ours by accident."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequestError(FrameBufferError, ValueError):
    """The request itself is malformed."""


class UnknownObjectError(FrameBufferError, KeyError):
    """The object id has no region in the buffer."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return Exception.__str__(self)


class StampOutOfRangeError(FrameBufferError):
    """The stamp lies outside the buffered span (too old or in the future)."""


class NoFrameError(FrameBufferError):
    """No frame (or no frame holding this object) matches the requested stamp or window."""


class TokensNotReadyError(FrameBufferError):
    """The work is queued; asking again after `FrameBuffer.wait_for_update` may succeed."""


_ERROR_CLASSES: dict[ErrorCode, type[FrameBufferError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.UNKNOWN_OBJECT: UnknownObjectError,
    ErrorCode.STAMP_TOO_OLD: StampOutOfRangeError,
    ErrorCode.STAMP_IN_FUTURE: StampOutOfRangeError,
    ErrorCode.TOKENS_NOT_READY: TokensNotReadyError,
}


def make_error(code: ErrorCode, message: str) -> FrameBufferError:
    """The exception class for `code`, so callers can catch a family or read `.code`."""
    return _ERROR_CLASSES.get(code, NoFrameError)(code, message)


@dataclass(frozen=True)
class ObjectTokens:
    """Infused object tokens of one object in one frame, computed once and kept."""

    object_id: ObjectId
    stamp_ns: int  # the frame's stamp (not the region's, which may differ within tolerance)
    tokens: Any = field(repr=False)  # [K, H] tensor from the object tokenizer
    nbytes: int


class RegionStatus(enum.Enum):
    MATCHED = "matched"  # attached to a buffered frame; tokens will be computed
    PENDING = "pending"  # its frame has not arrived yet
    DUPLICATE = "duplicate"  # tokens for (object, frame) exist or are being computed
    REJECTED = "rejected"  # see `code`


@dataclass(frozen=True)
class RegionMatch:
    status: RegionStatus
    frame_stamp_ns: int | None = None  # set when MATCHED or DUPLICATE
    code: ErrorCode | None = None  # set when REJECTED
    message: str = ""


@dataclass(frozen=True)
class AddFrameResult:
    stamp_ns: int
    accepted: bool  # False for a duplicate stamp or an out-of-order frame older than the window
    reset_reason: str | None = None  # set when the buffer was cleared before this frame
    evicted_frames: int = 0
    matched_regions: int = 0  # pending regions that found this frame


@dataclass(frozen=True)
class GlobalJob:
    """Compute the global features of one frame. `demanded` means a region waits on it; otherwise
    it is a latest-wins prefetch."""

    stamp_ns: int
    image: np.ndarray | None = field(repr=False)
    epoch: int  # pass back to `set_global` so a result from before a reset is discarded
    demanded: bool


@dataclass(frozen=True)
class TokenJob:
    """Compute the infused tokens of one object in one frame whose global features are ready."""

    object_id: ObjectId
    stamp_ns: int  # frame stamp
    region: Any = field(repr=False)  # the payload given to `add_region` (mask, box, ...)
    image: np.ndarray | None = field(repr=False)
    global_payload: Any = field(repr=False)
    epoch: int


@dataclass(frozen=True)
class WorkPlan:
    global_jobs: tuple[GlobalJob, ...] = ()
    token_jobs: tuple[TokenJob, ...] = ()
    skipped_stamps: tuple[int, ...] = ()  # frames passed over by this latest-wins pick

    @property
    def empty(self) -> bool:
        return not self.global_jobs and not self.token_jobs


@dataclass(frozen=True)
class BufferStats:
    """One snapshot for diagnostics; counters are cumulative since construction."""

    frames: int
    frames_with_image: int
    frames_with_global: int
    objects: int
    token_sets: int  # stored (object, frame) token tensors
    waiting_regions: int  # matched, tokens not yet computed
    pending_regions: int  # frame not yet arrived
    bytes_image: int
    bytes_global: int
    bytes_regions: int
    bytes_tokens: int
    bytes_total: int
    bytes_device: int  # part of bytes_total that lives on an accelerator
    max_bytes: int
    over_budget: bool  # only the newest frame is left and it alone exceeds max_bytes
    oldest_stamp_ns: int | None
    newest_stamp_ns: int | None
    span_s: float  # newest - oldest
    newest_age_s: float | None  # now - newest, when `stats(now_ns=...)` is given a clock
    epoch: int  # bumped by every reset
    frames_added: int
    frames_evicted: int
    frames_skipped: int  # passed over by the latest-wins prefetch
    frames_unencoded: int  # left the buffer (or lost their image) without ever being encoded
    raw_dropped: int  # frames whose image/global features were released
    objects_evicted: int
    regions_expired: int  # pending too long, or their frame never came
    regions_overflowed: int  # dropped because the pending queue was full
    regions_evicted: int  # lost with their frame, their object or a reset
    jobs_failed: int
    results_discarded: int  # results for frames that were evicted or reset meanwhile
    resets: int
    last_reset_reason: str | None
