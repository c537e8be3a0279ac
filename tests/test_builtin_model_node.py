"""The built-in shapes model behind the real node, across processes: refer_node (default
`model_dir`, i.e. models/shapes) and synthetic_camera on held-out scenes, asked over
/describe_region. The answers are checked against the camera's ground truth for the very frames
the node says it used, so the right object at the right stamp is what is tested, not only that
some text came back.

Asserted here: colours in single-frame and video mode (the model's measured accuracy is 1.00 on
held-out scenes), the stamps of the frames used, and that a relation question gets a yes/no.
Motion and relation accuracy are measured in tests/test_default_model.py.
"""

from __future__ import annotations

import json
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from pixelrefer_ros.ros import qos  # noqa: E402
from pixelrefer_ros.training.data import HELD_OUT_SEED  # noqa: E402
from pixelrefer_ros_interfaces.srv import DescribeRegion  # noqa: E402
from tests.rosutil import REPO_ROOT, spin_until, start_process, stop_process  # noqa: E402

REQ, RES = DescribeRegion.Request, DescribeRegion.Response
COLOR = "What color is <region>?"


def stamps(resp) -> dict[int, list[int]]:
    return {f.object_id: [s.sec * 1_000_000_000 + s.nanosec for s in f.stamps]
            for f in resp.frames_used}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(executor, client, truth by stamp) with both processes running."""
    logs = tmp_path_factory.mktemp("builtin")
    node = start_process(["-m", "pixelrefer_ros.ros.refer_node", "--ros-args", "--params-file",
                          str(REPO_ROOT / "config" / "refer.yaml")], logs / "refer_node.log")
    camera = start_process(["-m", "pixelrefer_ros.ros.synthetic_camera", "--ros-args",
                            "-p", "rate_hz:=4.0", "-p", "width:=256", "-p", "height:=256",
                            "-p", "frames_per_scene:=8", "-p", f"seed:={HELD_OUT_SEED + 500}"],
                           logs / "camera.log")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("builtin_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(probe)
    truth: dict[int, dict] = {}
    probe.create_subscription(String, "camera/ground_truth",
                              lambda m: truth.__setitem__(json.loads(m.data)["stamp_ns"],
                                                          json.loads(m.data)),
                              qos.regions_qos())
    client = probe.create_client(DescribeRegion, "describe_region")
    try:
        assert client.wait_for_service(timeout_sec=60), (logs / "refer_node.log").read_text()
        assert spin_until(executor, lambda: len(truth) >= 3, 30)
        yield executor, client, truth
    finally:
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
        assert stop_process(camera) == 0, (logs / "camera.log").read_text()[-2000:]
        assert stop_process(node) == 0, (logs / "refer_node.log").read_text()[-3000:]


def ask(world, **fields) -> RES:
    executor, client, _ = world
    fut = client.call_async(REQ(**fields))
    assert spin_until(executor, fut.done, 60)
    return fut.result()


def object_of(truth: dict, stamp: int, oid: int) -> dict:
    return next(o for o in truth[stamp]["objects"] if o["object_id"] == oid)


def test_single_frame_colours_match_the_frame_used(world):
    """Every object of several scenes, asked at the latest frame: the answer is the colour of
    that object in the frame whose stamp the response names."""
    _, _, truth = world
    checked, seen = 0, set()
    deadline = time.monotonic() + 90
    while checked < 8 and time.monotonic() < deadline:
        newest = truth[max(truth)]
        for obj in newest["objects"]:
            oid = obj["object_id"]
            if oid in seen:
                continue
            resp = ask(world, object_ids=[oid], question=COLOR, mode=REQ.MODE_LATEST,
                       timeout_s=10.0)
            # tokens not ready yet, or the node never buffered this object: frames the probe
            # saw can arrive at the node before its subscription or its encoder is up (CI: a
            # whole first scene), and a busy node drops frames (latest-wins). Another object
            # of a later scene is asked instead; the count below still has to reach 8.
            if resp.error_code in (RES.NO_FRAME, RES.NOT_READY, RES.UNKNOWN_OBJECT):
                continue
            assert resp.success, resp.message
            (stamp,) = stamps(resp)[oid]
            assert stamp in truth, "the node used a frame the camera never published"
            assert resp.text.strip() == object_of(truth, stamp, oid)["color"], resp.text
            seen.add(oid)
            checked += 1
        spin_until(world[0], lambda: False, 0.3)
    assert checked >= 8, f"only {checked} objects answered in time"


def test_video_mode_uses_several_frames_of_the_object_in_order(world):
    _, _, truth = world
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        newest = max(truth)
        objects = truth[newest]["objects"]
        if objects and truth[newest]["frame_index"] >= 3:
            oid = objects[0]["object_id"]
            resp = ask(world, object_ids=[oid], question=COLOR, mode=REQ.MODE_WINDOW,
                       window_s=10.0, max_frames=8, timeout_s=10.0)
            used = stamps(resp).get(oid, [])
            if resp.success and len(used) >= 3:
                break
        spin_until(world[0], lambda: False, 0.5)
    assert resp.success and len(used) >= 3, (resp.message, used)
    assert used == sorted(used) and all(s in truth for s in used)
    assert all(oid in {o["object_id"] for o in truth[s]["objects"]} for s in used)
    assert resp.text.strip() == object_of(truth, used[-1], oid)["color"], resp.text


def test_relation_question_is_answered_yes_or_no(world):
    _, _, truth = world
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        objects = truth[max(truth)]["objects"]
        if len(objects) >= 2:
            a, b = objects[0]["object_id"], objects[1]["object_id"]
            resp = ask(world, object_ids=[a, b], question="Is <region> to the left of <region>?",
                       mode=REQ.MODE_LATEST, timeout_s=10.0)
            if resp.success:
                break
        spin_until(world[0], lambda: False, 0.5)
    assert resp.success, resp.message
    assert resp.text.strip() in ("yes", "no"), resp.text
    assert stamps(resp)[a] == stamps(resp)[b]  # both regions of one frame
