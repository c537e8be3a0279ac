"""refer_node in its own process, this test process as camera and client (real rclpy, loopback).

The node runs the tiny random-weight checkpoint, so answers are gibberish: these tests check the
plumbing (frames, stamps, errors, QoS, BUSY, published headers), not the words.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Point32  # noqa: E402
from rcl_interfaces.srv import ListParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, RegionOfInterest  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from pixelrefer_ros.ros.conversions import (  # noqa: E402
    make_header,
    mask_to_image,
    ns_to_stamp,
    rgb_to_compressed,
    rgb_to_image,
    stamp_to_ns,
)
from pixelrefer_ros.synthetic import WorldConfig, generate_scene  # noqa: E402
from pixelrefer_ros_interfaces.msg import (  # noqa: E402
    ObjectDescription,
    RegionPrompt,
    RegionPromptArray,
)
from pixelrefer_ros_interfaces.srv import DescribeRegion  # noqa: E402
from tests.rosutil import REPO_ROOT, spin_until, start_process, stop_process  # noqa: E402
from tests.test_launch_params import launch_node_parameters  # noqa: E402

S = 1_000_000_000
DT = S // 10
R = DescribeRegion.Response
REQ = DescribeRegion.Request
FRAME_ID = "test_cam_optical"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def start_node(tiny_ckpt: Path, log: Path, namespace: str = "", **params) -> object:
    # The shipped YAML first: the node must accept every value in it (types included).
    args = ["-m", "pixelrefer_ros.ros.refer_node", "--ros-args", "--params-file",
            str(REPO_ROOT / "config/refer.yaml"), "-p", f"model_dir:={tiny_ckpt}"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    return start_process(args, log)


class Camera:
    """Publishes frames + regions the way a camera and a tracker would, and asks questions."""

    def __init__(self, ctx, cam: str = "camera", image_reliability=ReliabilityPolicy.RELIABLE,
                 compressed: bool = False, namespace: str = "") -> None:
        self.node = rclpy.create_node(f"test_client_{cam}", namespace=namespace, context=ctx)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.compressed = compressed
        img_qos = QoSProfile(depth=10, reliability=image_reliability)
        msg_type = Image
        topic = f"{cam}/image_raw"
        if compressed:
            from sensor_msgs.msg import CompressedImage as msg_type  # noqa: N813
            topic += "/compressed"
        self.image_pub = self.node.create_publisher(msg_type, topic, img_qos)
        self.regions_pub = self.node.create_publisher(RegionPromptArray, f"{cam}/regions", RELIABLE)
        self.client = self.node.create_client(DescribeRegion, "describe_region")
        self.descriptions: list[ObjectDescription] = []
        self.texts: list[str] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(ObjectDescription, "descriptions",
                                      self.descriptions.append, RELIABLE)
        self.node.create_subscription(String, "descriptions_text",
                                      lambda m: self.texts.append(m.data), RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      self.diagnostics.append, RELIABLE)

    def publish(self, stamp_ns: int, image: np.ndarray, masks: dict[int, np.ndarray],
                encoding: str = "rgb8") -> None:
        header = make_header(stamp_ns, FRAME_ID)
        if self.compressed:
            self.image_pub.publish(rgb_to_compressed(image, "png", header))
        else:
            self.image_pub.publish(rgb_to_image(image, encoding, header))
        regions = [RegionPrompt(header=header, object_id=oid, type=RegionPrompt.TYPE_MASK,
                                mask=mask_to_image(m, header)) for oid, m in masks.items()]
        self.regions_pub.publish(RegionPromptArray(header=header, regions=regions))

    def call(self, timeout: float = 30.0, **fields) -> DescribeRegion.Response:
        fut = self.client.call_async(REQ(**fields))
        assert spin_until(self.executor, fut.done, timeout), f"no response to {fields}"
        return fut.result()

    def spin(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def scene():
    return generate_scene(11, WorldConfig(num_frames=8, min_objects=2, max_objects=2))


@pytest.fixture(scope="module")
def node(tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("refer_node") / "refer_node.log"
    proc = start_node(tiny_ckpt, log, max_queued_requests=2, diagnostics_period_s=0.5,
                      max_region_patches=MAX_REGION_PATCHES)
    yield proc, log
    rc = stop_process(proc)
    assert rc == 0, f"refer_node exited with {rc}:\n{log.read_text()[-3000:]}"


def publish_until_buffered(camera: Camera, stamp_ns: int, image: np.ndarray,
                           masks: dict[int, np.ndarray], timeout: float = 30.0) -> None:
    """Publish one frame and its regions, and ask at its stamp until the node answers from it
    (sending it again meanwhile), before the next frame is sent.

    The node subscribes images best effort, depth 1 (config/refer.yaml), and a busy node keeps
    only the newest waiting frame (latest-wins): frames sent back to back can be lost or
    skipped, and the tests below ask at every stamp. A frame sent twice is kept once.
    """
    deadline = time.monotonic() + timeout
    while True:
        camera.publish(stamp_ns, image, masks)
        camera.spin(0.05)
        resp = camera.call(object_ids=sorted(masks), mode=REQ.MODE_STAMP,
                           stamp=ns_to_stamp(stamp_ns), max_new_tokens=1,
                           question=" ".join(["<region>"] * len(masks)) + "?")
        if resp.success or time.monotonic() > deadline:
            break
        camera.spin(0.2)
    assert resp.success, f"frame {stamp_ns} never answerable: {resp.message}"


@pytest.fixture(scope="module")
def cam(ctx, node, scene):
    """Camera connected to the running node, with one scene's frames published."""
    _, log = node
    camera = Camera(ctx)
    if not camera.client.wait_for_service(timeout_sec=90.0):
        pytest.fail(f"describe_region never came up:\n{log.read_text()[-3000:]}")
    assert spin_until(camera.executor, lambda: camera.image_pub.get_subscription_count() > 0
                      and camera.regions_pub.get_subscription_count() > 0, 20)
    camera.stamps = []
    t0 = time.time_ns() // DT * DT
    for t in range(scene.num_frames):
        camera.stamps.append(t0 + t * DT)
        publish_until_buffered(camera, camera.stamps[-1], scene.frames[t],
                               {0: scene.masks[t, 0], 1: scene.masks[t, 1]})
    # Those checks published descriptions of their own (the first ones may be lost to discovery):
    # let the rest arrive, then forget them all.
    camera.spin(1.0)
    camera.descriptions.clear()
    camera.texts.clear()
    yield camera
    camera.close()


def stamps_of(resp) -> dict[int, list[int]]:
    return {f.object_id: [stamp_to_ns(s) for s in f.stamps] for f in resp.frames_used}


def test_running_node_declares_every_yaml_and_launch_parameter(cam):
    client = cam.node.create_client(ListParameters, "/refer_node/list_parameters")
    assert client.wait_for_service(timeout_sec=10)
    fut = client.call_async(ListParameters.Request())
    assert spin_until(cam.executor, fut.done, 10)
    declared = set(fut.result().result.names)
    yaml_keys = yaml.safe_load((REPO_ROOT / "config/refer.yaml").read_text())["/**"][
        "ros__parameters"]
    assert set(yaml_keys) <= declared, set(yaml_keys) - declared
    assert set(launch_node_parameters()) <= declared


def test_describe_latest_and_at_stamp(cam):
    resp = cam.call(object_ids=[0], mode=REQ.MODE_LATEST)
    assert resp.success, resp.message
    assert resp.error_code == R.OK and resp.model_id == "tiny_ckpt"
    (used,) = stamps_of(resp)[0]
    assert used in cam.stamps
    assert resp.prompt_tokens > 32 and resp.total_s > 0 and resp.stop_reason
    resp = cam.call(object_ids=[0], mode=REQ.MODE_STAMP,
                    stamp=ns_to_stamp(cam.stamps[2] + 3_000_000))  # within the 20 ms tolerance
    assert resp.success, resp.message
    assert stamps_of(resp) == {0: [cam.stamps[2]]}
    # The published answer carries the header of the newest frame used.
    assert spin_until(cam.executor, lambda: len(cam.descriptions) >= 2 and len(cam.texts) >= 2, 15)
    desc = cam.descriptions[-1]
    assert stamp_to_ns(desc.header.stamp) == cam.stamps[2] and desc.header.frame_id == FRAME_ID
    assert list(desc.object_ids) == [0] and desc.text == resp.text == cam.texts[-1]
    assert desc.model_id == "tiny_ckpt" and "<region>" in desc.question


def test_video_mode_returns_several_stamps_in_order(cam):
    cam.call(object_ids=[1], mode=REQ.MODE_STAMP, stamp=ns_to_stamp(cam.stamps[0]))
    resp = cam.call(object_ids=[1], mode=REQ.MODE_WINDOW, window_s=5.0, max_frames=4)
    assert resp.success, resp.message
    used = stamps_of(resp)[1]
    assert 2 <= len(used) <= 4 and used == sorted(used) and set(used) <= set(cam.stamps)
    assert spin_until(cam.executor, lambda: cam.descriptions and stamp_to_ns(
        cam.descriptions[-1].header.stamp) == used[-1], 15)  # header = newest frame used


def test_relation_with_two_ids(cam):
    resp = cam.call(object_ids=[0, 1], question="Is <region> to the left of <region>?")
    assert resp.success, resp.message
    used = stamps_of(resp)
    assert set(used) == {0, 1} and used[0] == used[1] and len(used[0]) == 1


def test_inline_region_on_newest_frame(cam):
    box = RegionPrompt(object_id=42, type=RegionPrompt.TYPE_POLYGON,
                       polygon=[Point32(x=10.0, y=10.0), Point32(x=80.0, y=12.0),
                                Point32(x=40.0, y=90.0)])
    resp = cam.call(object_ids=[42, 0], question="Is <region> to the left of <region>?",
                    regions=[box])
    assert resp.success, resp.message
    assert stamps_of(resp)[42] == [cam.stamps[-1]] and resp.vision_s > 0


MAX_REGION_PATCHES = 2048  # a 1-pixel region's zoomed crop is 8,100 patches; scene objects ~500


def speck_box(object_id: int, header=None) -> RegionPrompt:
    """A 1x1 px box: the official zoom makes it a 4,564 px square crop (8,100 patches)."""
    return RegionPrompt(header=header or make_header(0, FRAME_ID), object_id=object_id,
                        type=RegionPrompt.TYPE_BOX,
                        box=RegionOfInterest(x_offset=100, y_offset=60, width=1, height=1))


def bad_mask_region(h: int, w: int, fill: int) -> RegionPrompt:
    return RegionPrompt(object_id=5, type=RegionPrompt.TYPE_MASK,
                        mask=mask_to_image(np.full((h, w), fill, np.uint8)))


@pytest.mark.parametrize("case", ["unknown_object", "no_frame_in_window", "stamp_too_old",
                                  "stamp_in_future", "mask_size", "empty_mask", "too_costly",
                                  "placeholders",
                                  "bad_mode", "unknown_camera"])
def test_bad_requests_get_their_error_code(cam, node, case):
    newest, oldest = cam.stamps[-1], cam.stamps[0]
    requests = {
        "unknown_object": ({"object_ids": [999]}, R.UNKNOWN_OBJECT, "999"),
        "no_frame_in_window": ({"object_ids": [0], "mode": REQ.MODE_WINDOW, "window_s": 0.01,
                                "stamp": ns_to_stamp(oldest + DT // 2)}, R.NO_FRAME, "no frame"),
        "stamp_too_old": ({"object_ids": [0], "mode": REQ.MODE_STAMP,
                           "stamp": ns_to_stamp(oldest - 5 * S)}, R.STAMP_TOO_OLD, "stamp"),
        "stamp_in_future": ({"object_ids": [0], "mode": REQ.MODE_STAMP,
                             "stamp": ns_to_stamp(newest + 60 * S)}, R.STAMP_IN_FUTURE, "stamp"),
        "mask_size": ({"object_ids": [5], "regions": [bad_mask_region(10, 12, 1)]},
                      R.BAD_REGION, "mask is 12x10 but image is 256x256"),
        "empty_mask": ({"object_ids": [5], "regions": [bad_mask_region(256, 256, 0)]},
                       R.BAD_REGION, "empty region"),
        "too_costly": ({"object_ids": [5], "regions": [speck_box(5)]}, R.BAD_REGION,
                       f"8100 ViT patches (the official zoom enlarges small regions), above "
                       f"max_region_patches={MAX_REGION_PATCHES}"),
        "placeholders": ({"object_ids": [0], "question": "Compare <region> and <region>."},
                         R.BAD_REQUEST, "placeholder"),
        "bad_mode": ({"object_ids": [0], "mode": 9}, R.BAD_REQUEST, "mode"),
        "unknown_camera": ({"object_ids": [0], "camera": "nope"}, R.BAD_REQUEST, "camera"),
    }
    fields, code, words = requests[case]
    resp = cam.call(**fields)
    assert not resp.success and resp.error_code == code, (resp.error_code, resp.message)
    assert words in resp.message
    assert node[0].poll() is None


def test_regions_too_costly_to_encode_are_refused_at_intake(cam, node):
    """A 1-pixel region from the tracker topic never reaches the worker: refused, counted and
    explained in /diagnostics; the node answers for the other objects as before."""
    def camera_status() -> dict[str, str]:
        for d in reversed(cam.diagnostics):
            for s in d.status:
                if s.name == "refer_node: camera camera":
                    return {kv.key: kv.value for kv in s.values}
        return {}

    header = make_header(cam.stamps[-1], FRAME_ID)
    cam.regions_pub.publish(RegionPromptArray(header=header, regions=[speck_box(77, header)]))
    assert spin_until(cam.executor, lambda: "max_region_patches" in
                      camera_status().get("last_region_error", ""), 15), camera_status()
    status = camera_status()
    assert status["last_region_error"].startswith("object 77: region of 1 pixel(s)")
    assert int(status["regions_rejected"]) >= 1
    resp = cam.call(object_ids=[77])
    assert resp.error_code == R.UNKNOWN_OBJECT, resp.message
    assert cam.call(object_ids=[0]).success and node[0].poll() is None


def test_bad_frames_are_logged_and_the_node_stays_up(cam, node, scene):
    proc, log = node
    bad = Image(header=make_header(cam.stamps[-1] + DT, FRAME_ID), height=4, width=4,
                encoding="32FC1", step=16)
    bad.data = bytes(64)
    truncated = rgb_to_image(scene.frames[0], "rgb8", make_header(cam.stamps[-1] + 2 * DT))
    truncated.data = truncated.data[:1000]
    # One at a time: the node's image subscription keeps only the newest frame (depth 1).
    for msg, words in [(bad, "unsupported image encoding '32FC1'"), (truncated, "truncated")]:
        deadline = time.monotonic() + 10
        while words not in log.read_text() and time.monotonic() < deadline:
            cam.image_pub.publish(msg)
            cam.spin(0.3)
        assert words in log.read_text()
    assert "supported: rgb8" in log.read_text()
    assert proc.poll() is None
    assert cam.call(object_ids=[0]).success


def test_keeps_answering_while_frames_stream_at_30hz(cam, scene):
    stop = threading.Event()
    published: list[int] = []

    def stream() -> None:
        t0 = cam.stamps[-1] + S
        i = 0
        while not stop.is_set():
            stamp = t0 + i * S // 30
            k = i % scene.num_frames
            cam.publish(stamp, scene.frames[k], {0: scene.masks[k, 0], 1: scene.masks[k, 1]})
            published.append(stamp)
            i += 1
            time.sleep(1 / 30)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        answers = []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            answers.append(cam.call(object_ids=[0], mode=REQ.MODE_LATEST, max_new_tokens=8))
    finally:
        stop.set()
        thread.join()
    assert len(answers) >= 3 and all(a.success for a in answers), [a.message for a in answers]
    latest = [stamps_of(a)[0][0] for a in answers]
    assert latest == sorted(latest) and latest[-1] in published  # answers follow the stream
    assert len(published) > 100
    # Diagnostics saw the stream.
    assert spin_until(cam.executor, lambda: any(
        s.name.endswith("camera camera") for d in cam.diagnostics for s in d.status), 5)
    rates = [float(kv.value) for d in cam.diagnostics for s in d.status
             if s.name.endswith("camera camera") for kv in s.values if kv.key == "input_rate_hz"]
    assert max(rates) > 10


def test_busy_when_flooded(cam, node):
    # 8 at once: the service's DDS history (depth 10) holds them all until the executor takes them
    futures = [cam.client.call_async(REQ(object_ids=[0], max_new_tokens=64)) for _ in range(8)]
    assert spin_until(cam.executor, lambda: all(f.done() for f in futures), 60)
    codes = [f.result().error_code for f in futures]
    assert codes.count(R.BUSY) >= 1 and codes.count(R.OK) >= 2, codes  # max_queued_requests=2
    assert set(codes) <= {R.OK, R.BUSY}
    busy = next(f.result() for f in futures if f.result().error_code == R.BUSY)
    assert "retry" in busy.message and node[0].poll() is None
    assert cam.call(object_ids=[0]).success  # and it recovers at once


def test_diagnostics_report_worker_and_buffer(cam):
    def latest() -> dict[str, dict[str, str]]:
        return {s.name: {kv.key: kv.value for kv in s.values} for s in cam.diagnostics[-1].status}

    # Diagnostics come at 1 Hz: wait for one published after the flood of the test above.
    assert spin_until(cam.executor, lambda: len(cam.diagnostics) >= 2 and "results.BUSY" in
                      latest().get("refer_node: model worker", {}), 15)
    last = latest()
    worker = last["refer_node: model worker"]
    camera = last["refer_node: camera camera"]
    assert worker["backend"] == "torch" and worker["model_state"] == "running"
    assert float(worker["describe_p50_ms"]) > 0 and float(worker["describe_p95_ms"]) > 0
    assert int(worker["results.BUSY"]) >= 1 and int(worker["results.OK"]) >= 5
    assert int(camera["buffer_frames"]) > 0 and float(camera["buffer_mbytes"]) > 0
    assert int(camera["bad_frames"]) >= 2
    assert "32FC1" in camera["last_bad_reason"] or "truncated" in camera["last_bad_reason"]


@pytest.mark.filterwarnings("ignore:Deprecated in favor of")  # rclpy's own QoS-event logger
def test_qos_mismatch_warning_then_compressed_transport(ctx, tiny_ckpt, tmp_path, scene):
    """A best-effort camera and a reliable subscription never match: the node says so once.
    Then a reliable publisher on the compressed transport is served normally."""
    log = tmp_path / "qos_node.log"
    # In its own namespace, beside the module's node (which owns /describe_region).
    # use_sim_time with nothing on /clock: stamps come from the headers, so it must not matter.
    proc = start_node(tiny_ckpt, log, "/qos", cameras="[zcam]", image_transport="compressed",
                      image_qos_reliability="reliable", qos_warn_after_s=1.0,
                      diagnostics_period_s=0.5, use_sim_time="true")
    best_effort = Camera(ctx, "zcam", ReliabilityPolicy.BEST_EFFORT, True, "/qos")
    try:
        assert best_effort.client.wait_for_service(timeout_sec=90.0), log.read_text()[-3000:]
        header = make_header(time.time_ns(), FRAME_ID)
        deadline = time.monotonic() + 15
        while "best_effort" not in log.read_text() and time.monotonic() < deadline:
            best_effort.image_pub.publish(rgb_to_compressed(scene.frames[0], "png", header))
            best_effort.spin(0.2)
        warning = [line for line in log.read_text().splitlines() if "publisher(s) on" in line]
        assert len(warning) == 1 and "/qos/zcam/image_raw/compressed" in warning[0]
        assert "image_qos_reliability:=best_effort" in warning[0]
        best_effort.close()
        reliable = Camera(ctx, "zcam", ReliabilityPolicy.RELIABLE, True, "/qos")
        assert spin_until(reliable.executor,
                          lambda: reliable.image_pub.get_subscription_count() > 0, 20)
        t0 = time.time_ns()
        for t in range(3):
            reliable.publish(t0 + t * DT, scene.frames[t], {3: scene.masks[t, 0]})
            reliable.spin(0.05)
        resp = reliable.call(object_ids=[3], camera="zcam")
        assert resp.success, resp.message
        assert stamps_of(resp)[3][0] in {t0 + t * DT for t in range(3)}
        reliable.close()
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert len(re.findall("publisher\\(s\\) on", log.read_text())) == 1  # warned once


def test_missing_builtin_model_fails_clearly(tmp_path):
    from pixelrefer_ros.ros.refer_node import builtin_model_candidates

    if any((p / "config.json").is_file() for p in builtin_model_candidates()):
        pytest.skip("the built-in model exists")
    log = tmp_path / "no_model.log"
    proc = start_process(["-m", "pixelrefer_ros.ros.refer_node", "--ros-args", "--params-file",
                          str(REPO_ROOT / "config/refer.yaml"), "-p", "cameras:=[nomodel]"], log)
    assert proc.wait(60) == 1
    text = log.read_text()
    assert "built-in shapes model" in text and "model_dir:=" in text
