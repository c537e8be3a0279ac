"""Every QoS profile of the package, built in one place (style habit 13).

- Images: KEEP_LAST with a small depth, VOLATILE, reliability from a parameter. Only the newest
  frame matters (the buffer keeps the history); best effort matches both best-effort and reliable
  camera publishers, while a RELIABLE subscription silently ignores a best-effort camera
  (ros_conventions §4.1, the most repeated support issue).
- Region prompts and requests are sparse user input that must not be lost: RELIABLE, depth
  `regions_qos_depth` (10) for regions; the describe service holds a burst of SERVICE_BURST
  requests (see service_qos).
- Descriptions and diagnostics: RELIABLE, depth 10.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SERVICE_BURST = 100  # describe requests that may arrive at once without one being lost
RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}


def image_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Subscription profile for camera images (Image or CompressedImage)."""
    if reliability not in RELIABILITY:
        raise ValueError(f"image reliability {reliability!r}; choose one of {list(RELIABILITY)}")
    if depth < 1:
        raise ValueError(f"image QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE, reliability=RELIABILITY[reliability])


def _reliable(depth: int) -> QoSProfile:
    """RELIABLE, VOLATILE, KEEP_LAST `depth`: every profile here but the image subscription."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE, reliability=ReliabilityPolicy.RELIABLE)


def regions_qos(depth: int = 10) -> QoSProfile:
    """RegionPromptArray subscriptions (and publishers, e.g. the synthetic camera)."""
    if depth < 1:
        raise ValueError(f"regions QoS depth must be >= 1, got {depth}")
    return _reliable(depth)


def service_qos() -> QoSProfile:
    """/describe_region. The default services profile keeps 10 requests, and a burst beyond
    that, arriving before the executor takes them, was lost without an answer (the caller hung
    until its own timeout). The node answers BUSY at once past its worker queue, so the history
    only has to hold a burst until the executor gets to it; responses use the same depth."""
    return _reliable(SERVICE_BURST)


def descriptions_qos() -> QoSProfile:
    """ObjectDescription / String answers."""
    return _reliable(10)


def diagnostics_qos() -> QoSProfile:
    """/diagnostics (the aggregator subscribes reliable, depth 10)."""
    return _reliable(10)


def camera_publisher_qos() -> QoSProfile:
    """What the synthetic camera offers: reliable, depth 5 (matches any image subscription)."""
    return _reliable(5)
