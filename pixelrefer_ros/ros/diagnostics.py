"""/diagnostics for refer_node, built by hand (diagnostic_updater has no PyPI wheel).

One DiagnosticStatus for the model worker (backend, model state, queue, describe p50/p95,
results by code) and one per camera (input rate, bad frames, buffer fill / age / bytes, skipped
frames). Values are strings, as DiagnosticStatus requires.
"""

from __future__ import annotations

from collections.abc import Iterable

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from pixelrefer_ros.ros.inputs import CameraInput
from pixelrefer_ros.runtime import Backend, WorkerStats

MIB = 2**20


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _kv(**values: object) -> list[KeyValue]:
    def fmt(v: object) -> str:
        if v is None:
            return "n/a"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return [KeyValue(key=k, value=fmt(v)) for k, v in values.items()]


def worker_status(node_name: str, backend: Backend, stats: WorkerStats) -> DiagnosticStatus:
    level, message = DiagnosticStatus.OK, f"{backend.model_id} on {backend.name}/{backend.device}"
    if stats.state != "running":
        level, message = DiagnosticStatus.ERROR, f"model worker {stats.state}: {stats.last_error}"
    elif stats.queue_depth >= stats.max_queued:
        level, message = DiagnosticStatus.WARN, "request queue full (answering BUSY)"
    values = _kv(backend=backend.name, model_id=backend.model_id,
                 checkpoint=str(backend.checkpoint_dir), device=backend.device,
                 precision=backend.precision, model_state=stats.state,
                 load_s=backend.load_s, queue_depth=stats.queue_depth,
                 max_queued=stats.max_queued, requests=stats.requests,
                 describe_p50_ms=_ms(stats.describe_p50_s),
                 describe_p95_ms=_ms(stats.describe_p95_s),
                 global_jobs=stats.global_jobs, token_jobs=stats.token_jobs,
                 jobs_failed=stats.jobs_failed, frames_skipped=stats.frames_skipped,
                 last_error=stats.last_error or "")
    values += _kv(**{f"results.{code}": n for code, n in sorted(stats.results.items())})
    return DiagnosticStatus(level=level, name=f"{node_name}: model worker", message=message,
                            hardware_id=node_name, values=values)


def camera_status(node_name: str, cam: CameraInput, now_s: float, now_ns: int | None,
                  warn_after_s: float) -> DiagnosticStatus:
    b = cam.buffer.stats(now_ns=now_ns)
    cfg = cam.buffer.config
    rate = cam.input_rate_hz(now_s)
    silent = cam.silent_for_s(now_s)
    level, message = DiagnosticStatus.OK, f"{rate:.1f} Hz, {b.frames} frames buffered"
    if silent > warn_after_s:
        level, message = DiagnosticStatus.WARN, f"no frame for {silent:.0f} s on {cam.image_topic}"
    elif cam.bad_frames and cam.last_bad_reason:
        message += f"; {cam.bad_frames} bad frame(s), last: {cam.last_bad_reason}"
    values = _kv(image_topic=cam.image_topic, regions_topic=cam.regions_topic,
                 input_rate_hz=rate, frames_received=cam.frames_received,
                 frames_rejected=cam.frames_rejected, bad_frames=cam.bad_frames,
                 last_bad_reason=cam.last_bad_reason, regions_received=cam.regions_received,
                 regions_rejected=cam.regions_rejected, last_region_error=cam.last_region_error,
                 buffer_frames=b.frames, buffer_fill=b.frames / cfg.max_frames,
                 buffer_span_s=b.span_s, newest_age_s=b.newest_age_s,
                 buffer_mbytes=b.bytes_total / MIB, buffer_bytes_fill=b.bytes_total / b.max_bytes,
                 buffer_device_mbytes=b.bytes_device / MIB, objects=b.objects,
                 token_sets=b.token_sets, frames_with_global=b.frames_with_global,
                 waiting_regions=b.waiting_regions, pending_regions=b.pending_regions,
                 frames_skipped=b.frames_skipped, frames_unencoded=b.frames_unencoded,
                 frames_evicted=b.frames_evicted,
                 regions_expired=b.regions_expired, jobs_failed=b.jobs_failed,
                 resets=b.resets, last_reset_reason=b.last_reset_reason)
    return DiagnosticStatus(level=level, name=f"{node_name}: camera {cam.name}",
                            message=message, hardware_id=node_name, values=values)


def diagnostics_msg(stamp: Time, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    return DiagnosticArray(header=Header(stamp=stamp), status=list(statuses))
