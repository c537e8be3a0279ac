"""refer_node: PixelRefer-Lite over a rolling buffer of object tokens, behind /describe_region.

Wiring only. Per camera c: `<c>/image_raw` (or `<c>/image_raw/compressed`) and `<c>/regions`
in; service `describe_region`; `descriptions` (ObjectDescription), `descriptions_text` (String)
and `/diagnostics` out. Conversions live in conversions.py, request handling in service.py, the
buffer in pixelrefer_ros.buffer and all model work in the single runtime.ModelWorker thread.

Concurrency (`ReferExecutor`, ros/executor.py: rclpy's MultiThreadedExecutor without its
resubmit loop; `NodeParams.executor_threads` threads):
- subscriptions: one MutuallyExclusiveCallbackGroup; they only convert and store (never infer);
- the describe service: its own ReentrantCallbackGroup. Each call submits a job to the worker
  and blocks its executor thread until the answer (rclpy cannot defer a service response).
  Reentrant so that several calls can wait at once and the worker's bounded queue, not the
  executor, decides BUSY; a mutually exclusive group would serialise calls before the queue;
- the diagnostics / QoS-check timer: a third group, on the steady clock so it keeps running
  when a bag is paused under use_sim_time.
"""

from __future__ import annotations

import concurrent.futures
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from pixelrefer_ros.buffer import FrameBuffer, RegionStatus
from pixelrefer_ros.ros import diagnostics, qos
from pixelrefer_ros.ros.conversions import (
    ConversionError,
    check_region_cost,
    compressed_to_rgb,
    image_to_rgb,
    region_to_mask,
    stamp_to_ns,
)
from pixelrefer_ros.ros.executor import ReferExecutor
from pixelrefer_ros.ros.inputs import CameraInput, LatestFrame
from pixelrefer_ros.ros.params import declare_parameters, read_parameters
from pixelrefer_ros.ros.service import build_job, description_msgs, fill_response
from pixelrefer_ros.runtime import (
    DescribeResult,
    ModelWorker,
    RequestError,
    ResultCode,
    WorkerConfig,
    load_backend,
)
from pixelrefer_ros_interfaces.msg import ObjectDescription, RegionPrompt, RegionPromptArray
from pixelrefer_ros_interfaces.srv import DescribeRegion

BUILTIN_MODEL = Path("models") / "shapes"
# Past the request deadline, how long the service waits for the worker: generation stops at the
# deadline by itself, but a prefill or an inline-region encode already started is not cut.
ANSWER_GRACE_S = 2.0


def builtin_model_candidates() -> list[Path]:
    """Where model_dir "" looks: the source checkout, then the installed package share."""
    paths = [Path(__file__).resolve().parents[2] / BUILTIN_MODEL]
    try:
        from ament_index_python.packages import get_package_share_directory

        paths.append(Path(get_package_share_directory("pixelrefer_ros")) / BUILTIN_MODEL)
    except (ImportError, LookupError, OSError, ValueError):
        pass  # not installed in an ament prefix (or AMENT_PREFIX_PATH unset)
    return paths


def resolve_model_dir(model_dir: str) -> Path:
    if model_dir:
        return Path(model_dir).expanduser()
    for path in builtin_model_candidates():
        if (path / "config.json").is_file():
            return path
    tried = ", ".join(str(p) for p in builtin_model_candidates())
    raise FileNotFoundError(f"model_dir is empty and the built-in shapes model is not there "
                            f"(looked in: {tried}). Restore it (git checkout models/shapes) "
                            "or pass model_dir:=<checkpoint dir> (official "
                            "PixelRefer-Lite HF layout)")


class ReferNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("refer_node", **kwargs)
        declare_parameters(self)
        self.params = read_parameters(self)
        p = self.params
        log = self.get_logger()
        model_dir = resolve_model_dir(p.model_dir)
        log.info(f"loading {model_dir} (backend {p.backend}, {p.device}, {p.precision}) ...")
        self.backend = load_backend(p.backend, model_dir, p.device, p.precision, p.engine_dir,
                                    p.force_engine_update, p.cuda_graph_tokens)
        log.info(f"model {self.backend.model_id} loaded in {self.backend.load_s:.1f} s")
        self._preprocess = self.backend.model.config.preprocess  # for max_region_patches
        self._warned: dict[tuple[str, ...], float] = {}  # throttled warnings: kind -> last time
        self.inputs = {c: CameraInput(c, FrameBuffer(p.buffer_config())) for c in p.cameras}
        self.worker = ModelWorker(self.backend.model, {c: i.buffer for c, i in self.inputs.items()},
                                  WorkerConfig(max_queued=p.max_queued_requests),
                                  log_error=log.error)
        self.worker.start()
        self._create_endpoints()
        log.info(f"ready: cameras {list(p.cameras)} ({p.image_transport}, images "
                 f"{p.image_qos_reliability} depth {p.image_qos_depth}); service "
                 f"{self._srv.service_name}; {p.executor_threads} executor threads")

    def _create_endpoints(self) -> None:
        p = self.params
        inputs_group = MutuallyExclusiveCallbackGroup()
        service_group = ReentrantCallbackGroup()
        timer_group = MutuallyExclusiveCallbackGroup()
        image_qos = qos.image_qos(p.image_qos_reliability, p.image_qos_depth)
        self._subs = []
        for cam in self.inputs.values():
            if p.image_transport == "compressed":
                sub = self.create_subscription(
                    CompressedImage, f"{cam.name}/image_raw/compressed",
                    lambda m, c=cam: self.frame_cb(m, c, compressed_to_rgb), image_qos,
                    callback_group=inputs_group)
            else:
                sub = self.create_subscription(
                    Image, f"{cam.name}/image_raw",
                    lambda m, c=cam: self.frame_cb(m, c, image_to_rgb), image_qos,
                    callback_group=inputs_group)
            regions = self.create_subscription(
                RegionPromptArray, f"{cam.name}/regions", lambda m, c=cam: self.regions_cb(m, c),
                qos.regions_qos(p.regions_qos_depth), callback_group=inputs_group)
            cam.image_topic, cam.regions_topic = sub.topic_name, regions.topic_name
            self._subs += [sub, regions]
        self._srv = self.create_service(DescribeRegion, "describe_region", self.describe_cb,
                                        qos_profile=qos.service_qos(),
                                        callback_group=service_group)
        self._description_pub = self.create_publisher(ObjectDescription, "descriptions",
                                                      qos.descriptions_qos())
        self._text_pub = self.create_publisher(String, "descriptions_text",
                                               qos.descriptions_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                               qos.diagnostics_qos())
        self._diag_timer = self.create_timer(p.diagnostics_period_s, self.diagnostics_cb,
                                             callback_group=timer_group,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------------------ inputs
    def frame_cb(self, msg: Image | CompressedImage, cam: CameraInput, convert) -> None:
        """Convert and buffer; never inference. Bad frames are counted and logged (throttled)."""
        cam.frames_received += 1
        cam.last_frame_s = time.monotonic()
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp == 0:
                raise ConversionError("header.stamp is zero (the buffer is keyed by stamp)")
            rgb = convert(msg, self.params.max_image_pixels)
            added = cam.buffer.add_frame(stamp, rgb)
        except Exception as exc:  # never raise out of a callback: it would stop the executor
            cam.bad_frames += 1
            cam.last_bad_reason = str(exc)
            self._warn_throttled((cam.name, "frame", str(exc)),
                                 f"camera {cam.name}: frame dropped: {exc}")
            return
        if added.reset_reason:
            self.get_logger().warning(f"camera {cam.name}: {added.reset_reason}")
        if not added.accepted:
            cam.frames_rejected += 1
            return
        if cam.latest is None or stamp >= cam.latest.stamp_ns or added.reset_reason:
            cam.latest = LatestFrame(stamp, rgb, msg.header.frame_id)
        self.worker.wake()

    def regions_cb(self, msg: RegionPromptArray, cam: CameraInput) -> None:
        """Regions -> 0/1 masks -> buffer (matched to their frame by stamp)."""
        for region in msg.regions:
            cam.regions_received += 1
            try:
                reason = self._add_region(region, msg, cam)
            except Exception as exc:  # never raise out of a callback
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                cam.regions_rejected += 1
                cam.last_region_error = f"object {region.object_id}: {reason}"
                self._warn_throttled((cam.name, "region", reason),
                                     f"camera {cam.name}: region dropped: "
                                     f"{cam.last_region_error}")
        self.worker.wake()

    def _add_region(self, region: RegionPrompt, msg: RegionPromptArray, cam: CameraInput) -> str:
        stamp = stamp_to_ns(region.header.stamp) or stamp_to_ns(msg.header.stamp)
        if cam.latest is not None:
            hw = cam.latest.hw
        elif region.type == RegionPrompt.TYPE_MASK:
            hw = (region.mask.height, region.mask.width)
        else:
            return "no frame received yet on this camera to size the region"
        try:
            mask = region_to_mask(region, hw, self.params.point_radius_px)
            check_region_cost(mask, self.params.max_region_patches, self._preprocess)
        except ConversionError as exc:
            return str(exc)
        match = cam.buffer.add_region(int(region.object_id), stamp, mask)
        if match.status is RegionStatus.REJECTED:
            return f"{match.code.name if match.code else 'rejected'}: {match.message}"
        return ""

    def _warn_throttled(self, key: tuple[str, str, str], message: str,
                        period_s: float = 5.0) -> None:
        """At most one warning per period for each (camera, source, kind of reason); the kind
        is the reason up to its first digit, since stamps and sizes differ from frame to frame.
        Called only from the subscription group, so the dict has one writer."""
        kind = (*key[:2], re.split(r"\d", key[2], maxsplit=1)[0])
        now = time.monotonic()
        if now - self._warned.get(kind, -math.inf) >= period_s:
            self._warned[kind] = now
            self.get_logger().warning(message)

    # ----------------------------------------------------------------------------- service
    def describe_cb(self, request: DescribeRegion.Request,
                    response: DescribeRegion.Response) -> DescribeRegion.Response:
        job = None
        start = time.monotonic()
        try:
            job = build_job(request, self.params, self.inputs, start, self._preprocess)
            future = self.worker.submit(job)
            try:
                result = future.result(max(job.deadline - time.monotonic(), 0.0) + ANSWER_GRACE_S)
            except concurrent.futures.TimeoutError:
                future.cancel()
                result = DescribeResult(ResultCode.TIMEOUT, "no answer from the model worker "
                                        f"{ANSWER_GRACE_S:.0f} s past the deadline")
        except RequestError as err:
            result = DescribeResult(err.code, err.message)
        except Exception as exc:  # never raise out of a callback; the node keeps serving
            self.get_logger().error(f"describe_region failed: {type(exc).__name__}: {exc}")
            result = DescribeResult(ResultCode.MODEL_ERROR, f"internal error: {exc}")
        if result.total_s == 0.0:  # refused before reaching the worker
            result = replace(result, total_s=time.monotonic() - start)
        fill_response(response, result, self.backend.model_id)
        if result.success and job is not None and self.params.publish_descriptions:
            latest = self.inputs[job.camera].latest
            msg, text = description_msgs(result, job, latest.frame_id if latest else "",
                                         self.backend.model_id)
            self._description_pub.publish(msg)
            self._text_pub.publish(text)
        return response

    # ------------------------------------------------------------------------- diagnostics
    def diagnostics_cb(self) -> None:
        try:
            now_s = time.monotonic()
            now_ns = self.get_clock().now().nanoseconds or None  # 0: sim time, no /clock yet
            self._check_qos(now_s)
            statuses = [diagnostics.worker_status(self.get_name(), self.backend,
                                                  self.worker.stats())]
            statuses += [diagnostics.camera_status(self.get_name(), cam, now_s, now_ns,
                                                   self.params.qos_warn_after_s)
                         for cam in self.inputs.values()]
            self._diag_pub.publish(diagnostics.diagnostics_msg(self.get_clock().now().to_msg(),
                                                               statuses))
        except Exception as exc:  # never raise out of a callback
            self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=30.0)

    def _check_qos(self, now_s: float) -> None:
        """Publishers on an image topic but no frame for a while: warn once per topic. The usual
        cause is a best-effort camera and image_qos_reliability=reliable (no match, no error)."""
        for cam in self.inputs.values():
            silent = cam.silent_for_s(now_s)
            if cam.qos_warned or silent < self.params.qos_warn_after_s:
                continue
            pubs = self.get_publishers_info_by_topic(cam.image_topic)
            if not pubs:
                continue
            cam.qos_warned = True
            offered = sorted({f"{i.topic_type} {i.qos_profile.reliability.name.lower()}"
                              for i in pubs})
            self.get_logger().warning(
                f"{len(pubs)} publisher(s) on {cam.image_topic} ({', '.join(offered)}) but no "
                f"frame for {silent:.0f} s. This node subscribes "
                f"{self.params.image_qos_reliability}: a reliable subscription never matches a "
                "best_effort publisher (set image_qos_reliability:=best_effort); also check "
                f"image_transport={self.params.image_transport} against the message type.")

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    try:
        with rclpy.init(args=args):
            try:
                node = ReferNode()
            except Exception as exc:  # bad parameter, missing model ...: say why and exit 1
                rclpy.logging.get_logger("refer_node").fatal(f"cannot start: {exc}")
                return 1
            executor = ReferExecutor(num_threads=node.params.executor_threads)
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
