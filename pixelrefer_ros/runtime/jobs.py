"""What flows through the model worker: describe jobs, their results and the result codes
(ROS-free). The node builds `DescribeJob`s from DescribeRegion requests and copies
`DescribeResult`s into responses; tests build them directly."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelrefer_ros.buffer import ErrorCode, ObjectId
from pixelrefer_ros.model import prompt as prompts

NS = 1_000_000_000
# Bounds on one request's prompt, whatever the sender puts in it: every object adds 32 region
# tokens per frame, every character up to ~4 tokens (byte-level BPE), and prefill memory grows
# with the square of the prompt (60 ids x 4 frames took +400 MiB even on the 32-wide test model;
# on the 2B model such a request would exhaust memory). A relation names 2-3 objects.
MAX_OBJECTS_PER_REQUEST = 8
MAX_QUESTION_CHARS = 1000


class ResultCode(enum.IntEnum):
    """Same names and values as DescribeRegion.Response's constants (the node maps by name)."""

    OK = 0
    BAD_REQUEST = 1
    UNKNOWN_OBJECT = 2
    NO_FRAME = 3
    STAMP_TOO_OLD = 4
    STAMP_IN_FUTURE = 5
    BAD_REGION = 6
    BUSY = 7
    TIMEOUT = 8
    MODEL_ERROR = 9
    NOT_READY = 10


class Mode(enum.IntEnum):
    LATEST = 0  # newest frame with tokens for every object
    STAMP = 1  # the frame at `stamp_ns` (nearest within tolerance)
    WINDOW = 2  # video: frames in [end - window_s, end], end = stamp_ns or the newest frame


BUFFER_CODES: dict[ErrorCode, ResultCode] = {
    ErrorCode.INVALID_REQUEST: ResultCode.BAD_REQUEST,
    ErrorCode.EMPTY_BUFFER: ResultCode.NOT_READY,
    ErrorCode.UNKNOWN_OBJECT: ResultCode.UNKNOWN_OBJECT,
    ErrorCode.STAMP_TOO_OLD: ResultCode.STAMP_TOO_OLD,
    ErrorCode.STAMP_IN_FUTURE: ResultCode.STAMP_IN_FUTURE,
    ErrorCode.NO_FRAME_AT_STAMP: ResultCode.NO_FRAME,
    ErrorCode.OBJECT_NOT_IN_FRAME: ResultCode.NO_FRAME,
    ErrorCode.NO_FRAME_IN_WINDOW: ResultCode.NO_FRAME,
    ErrorCode.TOKENS_NOT_READY: ResultCode.NOT_READY,
    ErrorCode.RAW_DROPPED: ResultCode.NO_FRAME,
}


@dataclass(frozen=True)
class InlineFrame:
    """The camera's newest frame, on which a request's one-shot regions were drawn."""

    stamp_ns: int
    image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class DescribeJob:
    camera: str
    object_ids: tuple[ObjectId, ...]
    deadline: float  # time.monotonic() value; the answer is cut at this time
    question: str = ""  # "" = the default question for the mode and object count
    mode: Mode = Mode.LATEST
    stamp_ns: int = 0
    window_s: float = 2.0
    max_frames: int = 8
    max_new_tokens: int = 64
    inline_masks: Mapping[ObjectId, np.ndarray] = field(default_factory=dict, repr=False)
    inline_frame: InlineFrame | None = None


@dataclass(frozen=True)
class FramesUsed:
    object_id: ObjectId
    stamps_ns: tuple[int, ...]  # time order


@dataclass(frozen=True)
class DescribeResult:
    code: ResultCode
    message: str = ""
    text: str = ""  # the answer (partial on TIMEOUT)
    question: str = ""  # the question actually asked
    frames_used: tuple[FramesUsed, ...] = ()
    prompt_tokens: int = 0
    tokens_generated: int = 0
    stop_reason: str = ""
    queue_s: float = 0.0
    vision_s: float = 0.0  # request-time vision: inline regions and tokens not ready yet
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0

    @property
    def success(self) -> bool:
        return self.code is ResultCode.OK

    @property
    def newest_stamp_ns(self) -> int | None:
        stamps = [s for f in self.frames_used for s in f.stamps_ns]
        return max(stamps) if stamps else None


class RequestError(Exception):
    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


def default_question(mode: Mode, num_objects: int) -> str:
    if num_objects > 1:
        return prompts.relation_prompt(num_objects)
    return prompts.DEFAULT_PROMPT_VIDEO if mode is Mode.WINDOW else prompts.DEFAULT_PROMPT_IMAGE


def check_job(job: DescribeJob, cameras: Sequence[str]) -> RequestError | None:
    """Everything that can be refused without the model or the buffer."""
    bad = ResultCode.BAD_REQUEST
    if job.camera not in cameras:
        return RequestError(bad, f"unknown camera {job.camera!r}; cameras: {list(cameras)}")
    if not job.object_ids:
        return RequestError(bad, "no object ids (and no inline regions): name at least one")
    if len(job.object_ids) > MAX_OBJECTS_PER_REQUEST:
        return RequestError(bad, f"{len(job.object_ids)} object ids; at most "
                             f"{MAX_OBJECTS_PER_REQUEST} per request")
    if len(job.question) > MAX_QUESTION_CHARS:
        return RequestError(bad, f"the question has {len(job.question)} characters; at most "
                             f"{MAX_QUESTION_CHARS}")
    try:
        mode = Mode(job.mode)
    except ValueError:
        return RequestError(bad, f"mode {job.mode} is not MODE_LATEST=0, MODE_STAMP=1 or "
                             "MODE_WINDOW=2")
    if job.question and prompts.count_regions(job.question) != len(job.object_ids):
        return RequestError(bad, f"the question has {prompts.count_regions(job.question)} "
                             f"{prompts.REGION_PLACEHOLDER} placeholder(s) but "
                             f"{len(job.object_ids)} object id(s) were given; write one "
                             f"{prompts.REGION_PLACEHOLDER} per object, in order")
    if job.max_new_tokens < 1:
        return RequestError(bad, f"max_new_tokens must be >= 1, got {job.max_new_tokens}")
    if mode is Mode.STAMP and job.stamp_ns <= 0:
        return RequestError(bad, "MODE_STAMP needs a non-zero stamp")
    if mode is Mode.WINDOW and not (math.isfinite(job.window_s) and job.window_s > 0
                                    and job.max_frames >= 1):
        return RequestError(bad, f"MODE_WINDOW needs window_s > 0 and max_frames >= 1, got "
                             f"{job.window_s} and {job.max_frames}")
    extra = set(job.inline_masks) - set(job.object_ids)
    if extra:
        return RequestError(bad, f"inline region(s) for object(s) {sorted(extra)} not named "
                             "in object_ids")
    if job.inline_masks and job.inline_frame is None:
        return RequestError(ResultCode.NOT_READY, f"no frame received yet on camera "
                             f"{job.camera!r} to draw the inline regions on")
    return None


def describe_result_summary(result: DescribeResult) -> dict[str, Any]:
    """A JSON-able view of a result (demo and logs)."""
    return {"code": result.code.name, "message": result.message, "text": result.text,
            "frames_used": {str(f.object_id): list(f.stamps_ns) for f in result.frames_used},
            "total_s": round(result.total_s, 4)}
