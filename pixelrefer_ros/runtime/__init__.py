"""ROS-free runtime: the backend seam and the single model worker the node talks to."""

from .backend import BACKENDS, Backend, RegionModel, load_backend
from .jobs import (
    BUFFER_CODES,
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
    "BACKENDS", "BUFFER_CODES", "Backend", "DescribeJob", "DescribeResult", "FramesUsed",
    "InlineFrame", "Mode", "ModelWorker", "RegionModel", "RequestError", "ResultCode",
    "WorkerConfig", "WorkerStats", "check_job", "default_question", "load_backend",
]
