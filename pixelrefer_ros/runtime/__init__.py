"""ROS-free runtime: the backend seam and the single model worker the node talks to."""

from .backend import BACKENDS, Backend, RegionModel, load_backend
from .jobs import (
    BUFFER_CODES,
    MAX_OBJECTS_PER_REQUEST,
    MAX_QUESTION_CHARS,
    DescribeJob,
    DescribeResult,
    FramesUsed,
    InlineFrame,
    Mode,
    RequestError,
    ResultCode,
    check_job,
    default_question,
)
from .worker import ModelWorker, WorkerConfig, WorkerStats

__all__ = [
    "BACKENDS", "BUFFER_CODES", "MAX_OBJECTS_PER_REQUEST", "MAX_QUESTION_CHARS", "Backend",
    "DescribeJob", "DescribeResult", "FramesUsed", "InlineFrame", "Mode", "ModelWorker",
    "RegionModel", "RequestError", "ResultCode",
    "WorkerConfig", "WorkerStats", "check_job", "default_question", "load_backend",
]
