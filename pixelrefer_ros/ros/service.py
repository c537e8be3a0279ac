"""DescribeRegion request -> worker job, worker result -> response and published messages.

Only ROS message plumbing and request defaults live here; validation that needs no ROS is in
runtime/jobs.py (`check_job`), and everything about the model is behind the worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from std_msgs.msg import Header, String

from pixelrefer_ros.model.config import PreprocessConfig
from pixelrefer_ros.ros.conversions import (
    ConversionError,
    check_region_cost,
    ns_to_stamp,
    region_to_mask,
    stamp_to_ns,
)
from pixelrefer_ros.ros.inputs import CameraInput
from pixelrefer_ros.ros.params import NodeParams
from pixelrefer_ros.runtime import (
    MAX_OBJECTS_PER_REQUEST,
    DescribeJob,
    DescribeResult,
    InlineFrame,
    RequestError,
    ResultCode,
)
from pixelrefer_ros_interfaces.msg import ObjectDescription, ObjectFrames
from pixelrefer_ros_interfaces.srv import DescribeRegion


def _finite_non_negative(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise RequestError(ResultCode.BAD_REQUEST, f"{name} must be a finite number >= 0 "
                           f"(0 = the node's default), got {value}")
    return value


def build_job(req: DescribeRegion.Request, params: NodeParams,
              inputs: Mapping[str, CameraInput], now_s: float,
              preprocess: PreprocessConfig) -> DescribeJob:
    """Apply the node's defaults and caps, convert inline regions to masks on the camera's
    newest frame (`preprocess`: the model's constants, for the `max_region_patches` check). Raises
    RequestError (BAD_REQUEST, BAD_REGION, NOT_READY)."""
    camera = req.camera or params.cameras[0]
    cam = inputs.get(camera)
    if cam is None:
        raise RequestError(ResultCode.BAD_REQUEST, f"unknown camera {camera!r}; this node has "
                           f"cameras {list(params.cameras)}")
    timeout = _finite_non_negative("timeout_s", req.timeout_s) or params.request_timeout_s
    window = _finite_non_negative("window_s", req.window_s) or params.video_window_s
    ids = [int(i) for i in req.object_ids]
    inline: dict[int, object] = {}
    frame = None
    if len(req.regions) > MAX_OBJECTS_PER_REQUEST:  # before drawing a full-frame mask for each
        raise RequestError(ResultCode.BAD_REQUEST, f"{len(req.regions)} inline regions; at most "
                           f"{MAX_OBJECTS_PER_REQUEST} per request")
    if req.regions:
        latest = cam.latest
        if latest is None:
            raise RequestError(ResultCode.NOT_READY, f"no frame received yet on camera "
                               f"{camera!r} to draw the inline regions on")
        for i, region in enumerate(req.regions):
            oid = int(region.object_id)
            if oid in inline:
                raise RequestError(ResultCode.BAD_REQUEST, f"two inline regions for object {oid}")
            try:
                inline[oid] = region_to_mask(region, latest.hw, params.point_radius_px)
                check_region_cost(inline[oid], params.max_region_patches, preprocess)
            except ConversionError as exc:
                raise RequestError(ResultCode.BAD_REGION,
                                   f"inline region {i} (object {oid}): {exc}") from None
        frame = InlineFrame(latest.stamp_ns, latest.image)
        ids = ids or list(inline)
    return DescribeJob(
        camera=camera, object_ids=tuple(ids), deadline=now_s + min(timeout,
                                                                  params.request_timeout_s),
        question=req.question, mode=req.mode, stamp_ns=stamp_to_ns(req.stamp), window_s=window,
        max_frames=min(req.max_frames or params.video_max_frames, params.video_max_frames),
        max_new_tokens=min(req.max_new_tokens or params.max_new_tokens, params.max_new_tokens),
        inline_masks=inline, inline_frame=frame)


def frames_msgs(result: DescribeResult) -> list[ObjectFrames]:
    return [ObjectFrames(object_id=int(f.object_id), stamps=[ns_to_stamp(s) for s in f.stamps_ns])
            for f in result.frames_used]


def fill_response(response: DescribeRegion.Response, result: DescribeResult,
                  model_id: str) -> DescribeRegion.Response:
    """Copy every field of the result; error_code by name (runtime ResultCode == srv consts)."""
    response.success = result.success
    response.error_code = getattr(DescribeRegion.Response, result.code.name)
    response.message = result.message
    response.text = result.text
    response.frames_used = frames_msgs(result)
    response.prompt_tokens = result.prompt_tokens
    response.tokens_generated = result.tokens_generated
    response.stop_reason = result.stop_reason
    response.queue_s = float(result.queue_s)
    response.vision_s = float(result.vision_s)
    response.prefill_s = float(result.prefill_s)
    response.decode_s = float(result.decode_s)
    response.total_s = float(result.total_s)
    response.model_id = model_id
    return response


def description_msgs(result: DescribeResult, job: DescribeJob, frame_id: str,
                     model_id: str) -> tuple[ObjectDescription, String]:
    """The published answer: header = the newest frame used (its stamp, the camera's
    frame_id), plus the plain-text mirror for `ros2 topic echo` users."""
    header = Header(stamp=ns_to_stamp(result.newest_stamp_ns or 0), frame_id=frame_id)
    msg = ObjectDescription(header=header, object_ids=[int(i) for i in job.object_ids],
                            frames_used=frames_msgs(result), question=result.question,
                            text=result.text, model_id=model_id)
    return msg, String(data=result.text)
