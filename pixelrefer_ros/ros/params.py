"""Every refer_node parameter, declared once (type, default, description), read into `NodeParams`.

This table is the single source of truth: `config/refer.yaml` and `launch/refer.launch.py` only
override values, and tests/test_launch_params.py checks that every name they set is declared here
with the same type. All parameters are read once at startup, so they are declared read-only
(`ros2 param set` then fails loudly instead of silently doing nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pixelrefer_ros.buffer import BufferConfig

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")  # "cuda:<index>" is accepted too
PRECISIONS = ("fp32", "fp16", "bf16")
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable", "system_default")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # its Python type fixes the ROS parameter type (bool, int, float, str, [str])
    description: str
    choices: tuple[str, ...] = ()


PARAMS: tuple[ParamSpec, ...] = (
    # Model and backend
    ParamSpec("backend", "torch", "inference backend; onnxruntime and tensorrt run the engines "
              "made by pixelrefer-export", BACKENDS),
    ParamSpec("model_dir", "", "checkpoint directory in the official HF layout; '' = the "
              "built-in shapes model (<package>/models/shapes)"),
    ParamSpec("engine_dir", "", "exported engines for onnxruntime/tensorrt ('' = "
              "<model_dir>/engines); unused by the torch backend"),
    ParamSpec("device", "cpu", "torch device: cpu, cuda or cuda:<index>", DEVICES),
    ParamSpec("precision", "fp32", "weights/activations dtype", PRECISIONS),
    ParamSpec("force_engine_update", False, "rebuild TensorRT engines even if tagged ones exist"),
    ParamSpec("cuda_graph_tokens", 2048, "torch backend on CUDA: KV cache positions kept for "
              "requests whose prompt + new tokens fit; their decode steps replay one CUDA graph "
              "(0 = eager decode, a cache per request); ignored on the CPU"),
    # Inputs
    ParamSpec("cameras", ["camera"], "camera names; per camera c the node subscribes to "
              "<c>/image_raw (or <c>/image_raw/compressed) and <c>/regions"),
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image; compressed: "
              "sensor_msgs/CompressedImage on <c>/image_raw/compressed", TRANSPORTS),
    ParamSpec("image_qos_reliability", "best_effort", "image subscription reliability; "
              "best_effort matches every publisher, reliable does NOT match best-effort cameras",
              RELIABILITIES),
    ParamSpec("image_qos_depth", 1, "image subscription history depth (KEEP_LAST; the buffer "
              "keeps the history, so 1 avoids stale queues)"),
    ParamSpec("regions_qos_depth", 10, "region subscription history depth (RELIABLE, KEEP_LAST: "
              "a burst of more arrays than this before the node takes them loses the oldest)"),
    ParamSpec("max_image_pixels", 16_777_216, "frames with more pixels are refused "
              "(default 4096x4096)"),
    ParamSpec("max_region_patches", 0, "refuse a region whose zoomed crop (official SAOT rule: "
              "a tiny region is enlarged until it covers 32 patches) would exceed this many ViT "
              "patches; 0 = no cap (the official processor still caps a crop at 8,192)"),
    ParamSpec("point_radius_px", 24.0, "TYPE_POINT regions become a filled disk of this "
              "radius (when the region's own point_radius is 0)"),
    # Rolling buffer (per camera)
    ParamSpec("buffer_window_s", 10.0, "frames older than this behind the newest are evicted"),
    ParamSpec("buffer_max_frames", 64, "most frames kept per camera"),
    ParamSpec("buffer_max_objects", 32, "most object ids kept per camera (least recently seen "
              "evicted)"),
    ParamSpec("buffer_max_mbytes", 512.0, "memory bound per camera: images, features, masks, "
              "tokens (MiB)"),
    ParamSpec("buffer_keep_raw_s", 1.0, "keep images/features this long behind the newest frame "
              "so late regions can still be encoded"),
    ParamSpec("stamp_tolerance_s", 0.02, "how far a region/request stamp may be from a frame "
              "stamp and still match it"),
    ParamSpec("encode_rate_hz", 0.0, "frames encoded ahead of any request per second (stamp "
              "time); 0 = as fast as the worker can (latest wins)"),
    # /describe_region
    ParamSpec("video_window_s", 2.0, "MODE_WINDOW default window length (s)"),
    ParamSpec("video_max_frames", 8, "MODE_WINDOW default and cap of frames per object"),
    ParamSpec("max_new_tokens", 64, "default and upper bound of generated tokens per request"),
    ParamSpec("request_timeout_s", 10.0, "default and upper bound of a request's timeout (s)"),
    ParamSpec("max_queued_requests", 4, "requests waiting for the model worker; more are "
              "answered BUSY at once"),
    ParamSpec("publish_descriptions", True, "publish ObjectDescription on `descriptions` and "
              "std_msgs/String on `descriptions_text` for every successful answer"),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics and of the QoS check (s)"),
    ParamSpec("qos_warn_after_s", 5.0, "warn (once per topic) when an image topic has "
              "publishers but no frame arrived for this long"),
)

_CUDA_RE = re.compile(r"^cuda(:\d+)?$")


@dataclass(frozen=True)
class NodeParams:
    """The validated parameter values; built by `read_parameters` or `from_mapping`."""

    backend: str
    model_dir: str
    engine_dir: str
    device: str
    precision: str
    force_engine_update: bool
    cuda_graph_tokens: int
    cameras: tuple[str, ...]
    image_transport: str
    image_qos_reliability: str
    image_qos_depth: int
    regions_qos_depth: int
    max_image_pixels: int
    max_region_patches: int
    point_radius_px: float
    buffer_window_s: float
    buffer_max_frames: int
    buffer_max_objects: int
    buffer_max_mbytes: float
    buffer_keep_raw_s: float
    stamp_tolerance_s: float
    encode_rate_hz: float
    video_window_s: float
    video_max_frames: int
    max_new_tokens: int
    request_timeout_s: float
    max_queued_requests: int
    publish_descriptions: bool
    diagnostics_period_s: float
    qos_warn_after_s: float

    def __post_init__(self) -> None:
        for spec in PARAMS:
            value = getattr(self, spec.name)
            if spec.choices and value not in spec.choices \
                    and not (spec.name == "device" and _CUDA_RE.match(str(value))):
                raise ValueError(f"parameter {spec.name}={value!r} is not allowed; choose one "
                                 f"of: {', '.join(spec.choices)}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) \
                or not all(c.strip() and c == c.strip() for c in self.cameras):
            raise ValueError(f"parameter cameras={list(self.cameras)!r} must be a non-empty list "
                             "of distinct, non-blank names")
        at_least_one = ("image_qos_depth", "regions_qos_depth", "max_image_pixels",
                        "buffer_max_frames", "buffer_max_objects", "video_max_frames",
                        "max_new_tokens", "max_queued_requests")
        positive = ("point_radius_px", "buffer_window_s", "buffer_max_mbytes", "video_window_s",
                    "request_timeout_s", "diagnostics_period_s", "qos_warn_after_s")
        non_negative = ("cuda_graph_tokens", "max_region_patches", "buffer_keep_raw_s",
                        "stamp_tolerance_s", "encode_rate_hz")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"parameter {name} must be >= 1, got {getattr(self, name)}")
        for name in positive:  # `not x > 0` also refuses NaN
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"parameter {name} must be a finite number > 0, got "
                                 f"{getattr(self, name)}")
        for name in non_negative:
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"parameter {name} must be a finite number >= 0, got "
                                 f"{getattr(self, name)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NodeParams:
        """Defaults from PARAMS, overridden by `values` (unknown names are an error)."""
        unknown = set(values) - {s.name for s in PARAMS}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
        merged = {s.name: values.get(s.name, s.default) for s in PARAMS}
        merged["cameras"] = tuple(merged["cameras"])
        return cls(**merged)

    def buffer_config(self) -> BufferConfig:
        """The per-camera FrameBuffer policy these parameters describe."""
        return BufferConfig(
            window_s=self.buffer_window_s,
            max_frames=self.buffer_max_frames,
            max_objects=self.buffer_max_objects,
            stamp_tolerance_s=self.stamp_tolerance_s,
            max_bytes=int(self.buffer_max_mbytes * 2**20),
            keep_raw_s=self.buffer_keep_raw_s,
            global_min_interval_s=1.0 / self.encode_rate_hz if self.encode_rate_hz > 0 else 0.0,
        )

    @property
    def executor_threads(self) -> int:
        """Threads of the node's MultiThreadedExecutor, set explicitly (rclcpp#2029: the
        core-count default deadlocks on 1-core containers). Each waiting describe request holds
        one thread (rclpy cannot defer a service response), so: the one being answered + the
        queued ones + one to answer BUSY + the subscription group + the timer group."""
        return self.max_queued_requests + 4


def ros_type(default: Any) -> int:
    """The rcl_interfaces ParameterType constant of a default value."""
    from rcl_interfaces.msg import ParameterType

    if isinstance(default, bool):  # before int: bool is an int subclass
        return ParameterType.PARAMETER_BOOL
    if isinstance(default, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(default, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(default, str):
        return ParameterType.PARAMETER_STRING
    if isinstance(default, list) and all(isinstance(v, str) for v in default):
        return ParameterType.PARAMETER_STRING_ARRAY
    raise TypeError(f"no ROS parameter type for default {default!r}")


def declare_parameters(node: Any) -> None:
    """Declare every parameter of PARAMS on `node` (an rclpy Node), read-only, described."""
    from rcl_interfaces.msg import ParameterDescriptor

    for spec in PARAMS:
        doc = spec.description + (f" [{' | '.join(spec.choices)}]" if spec.choices else "")
        node.declare_parameter(spec.name, spec.default, ParameterDescriptor(
            name=spec.name, type=ros_type(spec.default), description=doc, read_only=True))


def read_parameters(node: Any) -> NodeParams:
    """Read the declared values and validate them (ValueError names the bad parameter)."""
    return NodeParams.from_mapping({s.name: node.get_parameter(s.name).value for s in PARAMS})
