"""ROS-free rolling frame buffer: frames by stamp, global features, object tokens per (object,
frame), eviction by time/count/bytes and memory accounting."""

from .frame_buffer import BufferConfig, FrameBuffer, FrameEntry, GlobalState, sample_uniform
from .memory import ByteCount, measure, nbytes
from .records import (
    AddFrameResult,
    BufferStats,
    ErrorCode,
    FrameBufferError,
    GlobalJob,
    InvalidRequestError,
    NoFrameError,
    ObjectId,
    ObjectTokens,
    RegionMatch,
    RegionStatus,
    StampOutOfRangeError,
    TokenJob,
    TokensNotReadyError,
    UnknownObjectError,
    WorkPlan,
)

__all__ = [
    "AddFrameResult", "BufferConfig", "BufferStats", "ByteCount", "ErrorCode", "FrameBuffer",
    "FrameBufferError", "FrameEntry", "GlobalJob", "GlobalState", "InvalidRequestError",
    "NoFrameError", "ObjectId", "ObjectTokens", "RegionMatch", "RegionStatus",
    "StampOutOfRangeError", "TokenJob", "TokensNotReadyError", "UnknownObjectError", "WorkPlan",
    "measure", "nbytes", "sample_uniform",
]
