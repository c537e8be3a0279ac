"""Overload: 720p rgb8 frames at 60 Hz (each with a box region) plus 20 concurrent describe
calls against a refer_node with its shipped QoS (best effort, depth 1) and queue settings.

Every call must end OK, BUSY or TIMEOUT within its timeout plus the node's grace; frames the
worker cannot encode are dropped (latest wins) and counted in /diagnostics (`frames_unencoded`,
`frames_skipped`); the request queue, the buffer and the node's memory stay within their bounds.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import pytest

from pixelrefer_ros.ros.conversions import make_header, rgb_to_image
from tests.rosutil import rss_mib, spin_until, stop_process

rclpy = pytest.importorskip("rclpy")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import RegionOfInterest  # noqa: E402

from pixelrefer_ros_interfaces.msg import RegionPrompt, RegionPromptArray  # noqa: E402
from pixelrefer_ros_interfaces.srv import DescribeRegion  # noqa: E402
from tests.test_refer_node import Camera, start_node  # noqa: E402

R = DescribeRegion.Response
H, W, RATE_HZ, STREAM_S = 720, 1280, 60.0, 4.0
CALLS, CALL_TIMEOUT_S, GRACE_S = 20, 3.0, 2.0  # GRACE_S: refer_node.ANSWER_GRACE_S
MAX_QUEUED, MAX_FRAMES, MAX_MBYTES = 4, 64, 256.0
BURST_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
NAMES = {getattr(R, k): k for k in dir(R) if k.isupper() and isinstance(getattr(R, k), int)}


@pytest.fixture(scope="module")
def overload_node(ctx, tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("overload") / "refer_node.log"
    proc = start_node(tiny_ckpt, log, "/overload", max_queued_requests=MAX_QUEUED,
                      buffer_max_frames=MAX_FRAMES, buffer_max_mbytes=MAX_MBYTES,
                      request_timeout_s=CALL_TIMEOUT_S, diagnostics_period_s=0.25)
    cam = Camera(ctx, namespace="/overload")
    # 20 requests in one burst: the client's own request history must hold them all too (the
    # default services profile keeps 10; the node's side is qos.service_qos).
    cam.client = cam.node.create_client(DescribeRegion, "describe_region", qos_profile=BURST_QOS)
    try:
        if not cam.client.wait_for_service(timeout_sec=120):
            pytest.fail(f"refer_node never came up:\n{log.read_text()[-3000:]}")
        assert spin_until(cam.executor, lambda: cam.image_pub.get_subscription_count() > 0, 20)
        yield proc, log, cam
    finally:
        cam.close()
        rc = stop_process(proc)
    assert rc == 0, f"refer_node exited with {rc}:\n{log.read_text()[-3000:]}"


def values_by_status(cam: Camera, suffix: str) -> list[dict[str, str]]:
    return [{kv.key: kv.value for kv in s.values} for d in cam.diagnostics for s in d.status
            if s.name.endswith(suffix)]


def test_720p_at_60hz_with_20_concurrent_calls(overload_node, robustness_report):
    proc, _log, cam = overload_node
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8)
    frame = rgb_to_image(rgb, "rgb8", make_header(0, "overload_cam"))  # converted once
    box = RegionOfInterest(x_offset=500, y_offset=200, width=240, height=180)
    published: list[int] = []
    stop = threading.Event()

    def publish() -> int:
        stamp = time.time_ns()
        frame.header = make_header(stamp, "overload_cam")
        cam.image_pub.publish(frame)
        cam.regions_pub.publish(RegionPromptArray(header=frame.header, regions=[
            RegionPrompt(header=frame.header, object_id=0, type=RegionPrompt.TYPE_BOX, box=box)]))
        return stamp

    def stream() -> None:
        """The camera: 60 Hz by the clock, a region for object 0 on every frame."""
        t0 = time.monotonic()
        while not stop.is_set():
            published.append(publish())
            time.sleep(max(t0 + len(published) / RATE_HZ - time.monotonic(), 0.0))

    # Tokens for object 0 exist before the stream (so that OK is possible at all).
    for _ in range(3):
        publish()
        cam.spin(0.3)
    deadline = time.monotonic() + 60
    while not cam.call(object_ids=[0], timeout=60).success:
        assert time.monotonic() < deadline, "no tokens for object 0 after 60 s"
        cam.spin(0.3)
    rss_start = rss_mib(proc.pid)
    camera = threading.Thread(target=stream, daemon=True)
    camera.start()
    try:
        cam.diagnostics.clear()
        cam.spin(1.0)
        sent = time.monotonic()
        futures = [cam.client.call_async(DescribeRegion.Request(
            object_ids=[0], max_new_tokens=16, timeout_s=CALL_TIMEOUT_S)) for _ in range(CALLS)]
        done_at: dict[int, float] = {}

        def all_done() -> bool:
            for i, f in enumerate(futures):
                if f.done() and i not in done_at:
                    done_at[i] = time.monotonic() - sent
            return len(done_at) == CALLS

        limit = CALL_TIMEOUT_S + GRACE_S + 3.0
        assert spin_until(cam.executor, all_done, limit), \
            f"{CALLS - len(done_at)} call(s) unanswered after {limit} s"
        rss_peak = rss_mib(proc.pid)
        cam.spin(max(STREAM_S - (time.monotonic() - sent) - 1.0, 0.5))
    finally:
        stop.set()
        camera.join(5)
    stream_s = (published[-1] - published[0]) / 1e9
    cam.spin(1.0)  # the last diagnostics of the stream

    codes = collections.Counter(NAMES[f.result().error_code] for f in futures)
    assert set(codes) <= {"OK", "BUSY", "TIMEOUT"}, codes
    assert codes["BUSY"] >= CALLS - MAX_QUEUED - 2 and codes["OK"] >= 1, codes
    assert max(done_at.values()) <= CALL_TIMEOUT_S + GRACE_S + 2.0
    # BUSY is decided at once, without waiting on the model: the node's own time for each BUSY
    # answer (`total_s`, from callback entry) is small. At the client the last BUSY of the burst
    # can still arrive late on a loaded 2-core machine (one executor thread answers the 16 in
    # turn, beside 60 Hz of 2.6 MB frames: 1.46 s in one CI run), but before any deadline: a
    # BUSY that had waited would come at the timeout or later.
    busy = [i for i in done_at if futures[i].result().error_code == R.BUSY]
    busy_node_s = max(futures[i].result().total_s for i in busy)
    busy_s = max(done_at[i] for i in busy)
    assert busy_node_s < 0.5, busy_node_s
    assert busy_s < CALL_TIMEOUT_S, busy_s

    worker = values_by_status(cam, "model worker")
    camera_v = values_by_status(cam, "camera camera")
    assert worker and camera_v
    max_queue = max(int(v["queue_depth"]) for v in worker)
    last = camera_v[-1]
    received, encoded = int(last["frames_received"]), int(worker[-1]["global_jobs"])
    skipped, unencoded = int(last["frames_skipped"]), int(last["frames_unencoded"])
    assert max_queue <= MAX_QUEUED
    assert int(worker[-1]["frames_skipped"]) == skipped  # the worker counts the same frames
    assert encoded < received and unencoded > 0  # the node says what it could not encode
    assert max(int(v["buffer_frames"]) for v in camera_v) <= MAX_FRAMES
    frame_mib = H * W * 3 / 2**20
    assert max(float(v["buffer_mbytes"]) for v in camera_v) <= MAX_MBYTES + frame_mib
    assert rss_peak - rss_start < MAX_MBYTES + 200, (rss_start, rss_peak)
    rate = len(published) / stream_s
    robustness_report(
        f"overload 720p rgb8: published {len(published)} frames in {stream_s:.1f} s "
        f"({rate:.0f} Hz), node received {received}, encoded {encoded}, evicted or dropped "
        f"unencoded {unencoded} (latest-wins passed over {skipped}), "
        f"{last['buffer_frames']} buffered; {CALLS} concurrent calls: "
        f"{', '.join(f'{k}={v}' for k, v in sorted(codes.items()))}, slowest answer "
        f"{max(done_at.values()):.2f} s (timeout {CALL_TIMEOUT_S} s + grace {GRACE_S} s), max "
        f"queue {max_queue}/{MAX_QUEUED}, last BUSY at the client {busy_s:.2f} s (node-side max "
        f"{1000 * busy_node_s:.0f} ms); node RSS {rss_start:.0f} -> {rss_peak:.0f} MiB")
    assert rate > 20  # the load was real (60 Hz asked; a loaded 2-core machine may lag)
    assert proc.poll() is None and cam.call(object_ids=[0], timeout=30).success
