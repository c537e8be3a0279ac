"""Cross-process fuzzing: this test process throws a few hundred hypothesis-generated images,
RegionPromptArrays and DescribeRegion requests (tests/fuzz_strategies.py) at a running
refer_node (real rclpy, tiny random model), then checks that every message ended in a defined
response or a counted, logged rejection, that the node is alive, still answers a valid request
correctly, and that its memory stayed bounded.

The node subscribes images reliable, and images and regions with deep queues here, so that every
fuzzed message is delivered and can be accounted for (the shipped best-effort depth-1 image
setting is what the overload test runs).
"""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelrefer_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from tests.fuzz_strategies import (
    S,
    describe_requests,
    header,
    images,
    mostly,
    region_prompts,
    region_stamps,
    time_msg,
    well_formed,
)
from tests.rosutil import rss_mib, spin_until, stop_process

rclpy = pytest.importorskip("rclpy")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from pixelrefer_ros_interfaces.msg import RegionPromptArray  # noqa: E402
from pixelrefer_ros_interfaces.srv import DescribeRegion  # noqa: E402
from tests.test_refer_node import Camera, start_node  # noqa: E402

R = DescribeRegion.Response
KNOWN_IDS = (0, 1, 2, 2**32 - 1)
CASES = 200
MAX_PIXELS = 48 * 48  # the node's max_image_pixels: fuzzed sides up to 48, or huge
TIMEOUT_CAP_S = 2.0  # the node's request_timeout_s
GRACE_S = 2.0  # refer_node.ANSWER_GRACE_S
RSS_GROWTH_LIMIT_MIB = 150.0  # what the node keeps after the fuzz (a leak shows here)
# The transient peak while it runs: +20 MiB when this file runs alone, but in the whole suite
# (another draw order: 224 images / 272 regions / 118 requests) +762 to +1,207 MiB on
# 2026-11-25 (3 runs), back to +75..85 MiB by the end. Cause not found yet (roadmap); this
# bound only catches a runaway allocation.
RSS_PEAK_LIMIT_MIB = 3000.0
DEEP = QoSProfile(depth=400, reliability=ReliabilityPolicy.RELIABLE)
HW = (40, 48)  # the clean frames' size; drawn regions and requests are sized for it
ORIGIN = 1000 * S
CODE_NAMES = {getattr(R, k): k for k in dir(R) if k.isupper() and isinstance(getattr(R, k), int)}


def shifted(msg, delta_ns: int):
    """Move every non-zero stamp of a drawn message by delta_ns (zero stays a fuzz case)."""
    def move(t):
        ns = stamp_to_ns(t)
        return t if ns == 0 else time_msg(ns + delta_ns)
    if hasattr(msg, "header"):
        msg.header.stamp = move(msg.header.stamp)
    if hasattr(msg, "stamp"):
        msg.stamp = move(msg.stamp)
    for region in getattr(msg, "regions", []):
        region.header.stamp = move(region.header.stamp)
    return msg


@pytest.fixture(scope="module")
def fuzz_node(ctx, tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz_node") / "refer_node.log"
    proc = start_node(tiny_ckpt, log, "/fuzz", image_qos_reliability="reliable",
                      image_qos_depth=400, regions_qos_depth=400, max_image_pixels=MAX_PIXELS,
                      buffer_max_mbytes=32.0, request_timeout_s=TIMEOUT_CAP_S, max_new_tokens=8,
                      video_max_frames=4, diagnostics_period_s=0.5)
    cam = Camera(ctx, namespace="/fuzz")
    cam.deep_image_pub = cam.node.create_publisher(Image, "camera/image_raw", DEEP)
    cam.deep_regions_pub = cam.node.create_publisher(RegionPromptArray, "camera/regions", DEEP)
    try:
        if not cam.client.wait_for_service(timeout_sec=120):
            pytest.fail(f"refer_node never came up:\n{log.read_text()[-3000:]}")
        assert spin_until(cam.executor, lambda: cam.deep_image_pub.get_subscription_count() > 0
                          and cam.deep_regions_pub.get_subscription_count() > 0, 20)
        yield proc, log, cam
    finally:
        cam.close()
        rc = stop_process(proc)
    assert rc == 0, f"refer_node exited with {rc}:\n{log.read_text()[-3000:]}"


def clean_frame(cam: Camera, stamp_ns: int, oid: int) -> None:
    """A well-formed frame of size HW with a box-shaped mask for `oid`."""
    rng = np.random.default_rng(stamp_ns % 2**32)
    mask = np.zeros(HW, np.uint8)
    mask[8:30, 10:40] = 1
    cam.publish(stamp_ns, rng.integers(0, 256, (*HW, 3), np.uint8), {oid: mask})


def camera_values(cam: Camera, after: float) -> dict[str, str]:
    """The camera's diagnostics values from a message published after `after` (monotonic)."""
    cam.diagnostics.clear()
    assert spin_until(cam.executor, lambda: time.monotonic() > after + 1.2
                      and any(s.name.endswith("camera camera")
                              for d in cam.diagnostics for s in d.status), 10)
    status = next(s for d in reversed(cam.diagnostics) for s in d.status
                  if s.name.endswith("camera camera"))
    return {kv.key: kv.value for kv in status.values}


def wait_until_received(cam: Camera, images: int, regions: int, limit_s: float = 30.0) -> None:
    """Until the node reports taking `images` frames and `regions` regions off its queues. The
    two topics are separate queues: after a burst, a region can be taken before the frame
    sent ahead of it, so checks that depend on their order wait for the backlog first."""
    deadline = time.monotonic() + limit_s
    while True:
        values = camera_values(cam, time.monotonic())
        if (int(values["frames_received"]) >= images
                and int(values["regions_received"]) >= regions):
            return
        assert time.monotonic() < deadline, (images, regions, values)


def test_fuzzed_inputs_never_take_the_node_down(fuzz_node, robustness_report):
    proc, log, cam = fuzz_node
    base = time.time_ns()
    clean_frame(cam, base, 0)
    cam.spin(0.2)
    warm = cam.call(object_ids=[0], timeout=60)
    assert warm.success, warm.message
    rss_start = rss_mib(proc.pid)
    state = {"base": base, "images": 1, "bad_images": 0, "regions": 1, "rss_max": rss_start}
    codes: collections.Counter[str] = collections.Counter()
    slowest = [0.0]

    def publish_clean(stamp_ns: int) -> None:
        mask = np.zeros(HW, np.uint8)
        mask[5:30, 8:40] = 1
        cam.publish(stamp_ns, np.full((*HW, 3), 90, np.uint8), {state["images"] % 2: mask})
        state["images"] += 1
        state["regions"] += 1

    # Drawn messages carry stamps around ORIGIN (so that what hypothesis draws never depends on
    # the clock); they are moved onto the live timeline just before sending.
    @settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one_case(data):
        state["base"] += S // 20
        shift = state["base"] - ORIGIN
        stamps = mostly(st.just(ORIGIN), region_stamps(ORIGIN), odds=5)
        if data.draw(st.sampled_from([True, False, False])):
            publish_clean(state["base"])
        if data.draw(st.booleans()):
            msg = data.draw(images(max_side=48, stamps=stamps))
            bad = not well_formed(msg, MAX_PIXELS) or stamp_to_ns(msg.header.stamp) == 0
            cam.deep_image_pub.publish(shifted(msg, shift))
            state["images"] += 1
            state["bad_images"] += bad
        if data.draw(st.booleans()):
            ids = mostly(st.sampled_from(KNOWN_IDS), st.integers(0, 2**32 - 1))
            regions = data.draw(st.lists(region_prompts(HW, ids, stamps), max_size=4))
            msg = RegionPromptArray(header=header(data.draw(stamps)), regions=regions)
            cam.deep_regions_pub.publish(shifted(msg, shift))
            state["regions"] += len(regions)
        if data.draw(st.booleans()):
            req = shifted(data.draw(describe_requests(HW, KNOWN_IDS, ("camera",), ORIGIN)),
                          shift)
            start = time.monotonic()
            fut = cam.client.call_async(req)
            assert spin_until(cam.executor, fut.done, TIMEOUT_CAP_S + GRACE_S + 5.0), \
                f"no answer within the timeout cap + grace: {req}"
            slowest[0] = max(slowest[0], time.monotonic() - start)
            resp = fut.result()
            assert resp.error_code <= R.NOT_READY and resp.success == (resp.error_code == R.OK)
            assert resp.success or resp.message, resp
            codes[CODE_NAMES[resp.error_code]] += 1
        else:
            cam.spin(0.005)
        state["rss_max"] = max(state["rss_max"], rss_mib(proc.pid))
        assert proc.poll() is None, log.read_text()[-3000:]

    fuzz_start = time.monotonic()
    one_case()
    fuzz_s = time.monotonic() - fuzz_start

    # Still serving, correctly: a frame an hour ahead, then clean frames at wall-clock stamps
    # (a backwards clock jump: the buffer resets, as for a looping bag), an id never used before.
    wait_until_received(cam, state["images"], state["regions"])
    clean_frame(cam, state["base"] + 3600 * S, 1)
    wait_until_received(cam, state["images"] + 1, state["regions"] + 1)
    stamp = time.time_ns()
    clean_frame(cam, stamp, 4242)  # the jump back: the buffer resets on this frame
    wait_until_received(cam, state["images"] + 2, state["regions"] + 2)
    for k in (1, 2):
        clean_frame(cam, stamp + k * S // 10, 4242)
        cam.spin(0.1)
    resp = cam.call(object_ids=[4242], mode=DescribeRegion.Request.MODE_STAMP,
                    stamp=ns_to_stamp(stamp + S // 10), timeout=30)
    assert resp.success, resp.message
    assert [stamp_to_ns(s) for f in resp.frames_used for s in f.stamps] == [stamp + S // 10]

    values = camera_values(cam, time.monotonic())
    requests = sum(codes.values())
    assert int(values["frames_received"]) == state["images"] + 4
    assert int(values["bad_frames"]) == state["bad_images"]
    assert int(values["regions_received"]) == state["regions"] + 4
    assert int(values["resets"]) >= 1 and "frame dropped" in log.read_text()
    rss_end = rss_mib(proc.pid)
    robustness_report(
        f"fuzz refer_node (cross-process): {CASES} cases in {fuzz_s:.0f} s: "
        f"{state['images']} images ({state['bad_images']} refused as malformed), "
        f"{state['regions']} regions ({values['regions_rejected']} rejected), {requests} "
        f"requests ({', '.join(f'{k}={v}' for k, v in sorted(codes.items()))}), slowest "
        f"answer {slowest[0]:.2f} s, buffer resets {values['resets']}; node RSS "
        f"{rss_start:.0f} -> max {state['rss_max']:.0f} -> {rss_end:.0f} MiB")
    # How many drawn requests succeed depends on the draws (hypothesis reseeds from this test's
    # source, so any edit reshuffles them: 1 to 11 OK seen) and on timing: reported, not asserted.
    # Serving correctly is asserted above, by the fixed calls before and after the fuzzing.
    assert requests > 50 and codes["BAD_REQUEST"] >= 5
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MIB
    assert state["rss_max"] - rss_start < RSS_PEAK_LIMIT_MIB
    assert proc.poll() is None
