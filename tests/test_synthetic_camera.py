"""synthetic_camera in its own process, and `make demo` end to end with the tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from pixelrefer_ros.ros.conversions import image_to_rgb, region_to_mask, stamp_to_ns  # noqa: E402
from pixelrefer_ros_interfaces.msg import RegionPrompt, RegionPromptArray  # noqa: E402
from tests.rosutil import REPO_ROOT, ros_env, spin_until, start_process, stop_process  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def test_camera_publishes_frames_regions_and_truth_with_one_header(tmp_path):
    log = tmp_path / "camera.log"
    proc = start_process(["-m", "pixelrefer_ros.ros.synthetic_camera", "--ros-args", "-p",
                          "rate_hz:=20.0", "-p", "width:=300", "-p", "height:=200", "-p",
                          "frames_per_scene:=3", "-p", "frame_id:=synth"], log)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("camera_probe", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        images, regions, truths = {}, {}, {}
        node.create_subscription(Image, "camera/image_raw",
                                 lambda m: images.__setitem__(stamp_to_ns(m.header.stamp), m),
                                 RELIABLE)
        node.create_subscription(RegionPromptArray, "camera/regions",
                                 lambda m: regions.__setitem__(stamp_to_ns(m.header.stamp), m),
                                 RELIABLE)
        node.create_subscription(String, "camera/ground_truth", lambda m: truths.__setitem__(
            json.loads(m.data)["stamp_ns"], json.loads(m.data)), RELIABLE)
        assert spin_until(ex, lambda: len(set(images) & set(regions) & set(truths)) >= 10, 60), \
            log.read_text()
        seen_ids: set[int] = set()
        for stamp in sorted(set(images) & set(regions) & set(truths))[:10]:
            img, arr, gt = images[stamp], regions[stamp], truths[stamp]
            assert img.header.frame_id == arr.header.frame_id == gt["frame_id"] == "synth"
            rgb = image_to_rgb(img)
            assert rgb.shape == (200, 300, 3) and img.encoding == "rgb8"
            gt_ids = {o["object_id"] for o in gt["objects"]}
            assert {r.object_id for r in arr.regions} <= gt_ids
            for r in arr.regions:
                assert r.type == RegionPrompt.TYPE_MASK and r.header.stamp == arr.header.stamp
                mask = region_to_mask(r, rgb.shape[:2], 1.0)
                obj = next(o for o in gt["objects"] if o["object_id"] == r.object_id)
                assert int(mask.sum()) == obj["visible_px"]
                x0, y0, x1, y1 = obj["bbox"]
                ys, xs = np.nonzero(mask)
                assert abs(xs.min() - x0) <= 3 and abs(ys.min() - y0) <= 3
                assert abs(xs.max() + 1 - x1) <= 3 and abs(ys.max() + 1 - y1) <= 3
                assert obj["description"].startswith(f"a {obj['size']} {obj['color']} "
                                                      f"{obj['shape']}")
                seen_ids.add(r.object_id)
        # 3 frames per scene and 10 frames seen: several scenes, each with its own id block
        assert len({i // 10 for i in seen_ids}) >= 3
        assert all(i % 10 < 4 for i in seen_ids)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        assert stop_process(proc) == 0, log.read_text()


def test_demo_end_to_end_with_the_tiny_model(tiny_ckpt):
    env = ros_env()
    env.pop("ROS_DOMAIN_ID")  # the demo takes a domain of its own
    out = subprocess.run([sys.executable, "scripts/demo.py", "--model-dir", str(tiny_ckpt),
                          "--timeout", "150"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    for title in ("== single frame", "== video", "truth"):
        assert title in out.stdout
    assert "status      : OK" in out.stdout


def test_demo_with_a_missing_model_says_what_is_missing(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    out = subprocess.run([sys.executable, "scripts/demo.py", "--model-dir", str(missing),
                          "--timeout", "20"], cwd=REPO_ROOT, env=ros_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert str(missing) in out.stderr and "no config.json" in out.stderr, out.stderr
