"""Per-camera input state of refer_node: its buffer, newest frame and counters.

Concurrency: only the subscription callbacks write here, and they share one mutually exclusive
callback group, so there is one writer at a time. The describe service and the diagnostics timer
only read: single attribute assignments and int increments are atomic under the GIL, and the
newest frame is replaced as one immutable `LatestFrame`, never mutated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pixelrefer_ros.buffer import FrameBuffer


@dataclass(frozen=True)
class LatestFrame:
    stamp_ns: int
    image: np.ndarray = field(repr=False)  # RGB uint8 [H, W, 3]
    frame_id: str

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class CameraInput:
    name: str
    buffer: FrameBuffer
    image_topic: str = ""  # resolved (remapped) names, filled in once subscribed
    regions_topic: str = ""
    latest: LatestFrame | None = None
    frames_received: int = 0
    frames_rejected: int = 0  # duplicate stamps, or older than the buffer window
    bad_frames: int = 0  # could not be converted (encoding, size, truncated data ...)
    last_bad_reason: str = ""
    regions_received: int = 0
    regions_rejected: int = 0
    last_region_error: str = ""
    created_s: float = field(default_factory=time.monotonic)
    last_frame_s: float | None = None  # monotonic time of the last frame received
    qos_warned: bool = False
    _rate_count: int = 0
    _rate_t: float = field(default_factory=time.monotonic)

    def input_rate_hz(self, now_s: float) -> float:
        """Frames per second since the previous call (the diagnostics timer is the caller)."""
        dt = now_s - self._rate_t
        rate = (self.frames_received - self._rate_count) / dt if dt > 0 else 0.0
        self._rate_count, self._rate_t = self.frames_received, now_s
        return rate

    def silent_for_s(self, now_s: float) -> float:
        """Seconds without a frame (since startup when none came yet)."""
        return now_s - (self.last_frame_s if self.last_frame_s is not None else self.created_s)
