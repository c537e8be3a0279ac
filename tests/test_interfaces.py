"""The interfaces package round-trips between two processes with real rclpy."""

from __future__ import annotations

import array

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from pixelrefer_ros_interfaces.msg import RegionPrompt, RegionPromptArray
from pixelrefer_ros_interfaces.srv import DescribeRegion
from tests.rosutil import spin_until, start_process, stop_process


def test_field_layout() -> None:
    """The documented fields exist with the documented types (a rename breaks users' code)."""
    fields = RegionPrompt.get_fields_and_field_types()
    assert fields["object_id"] == "uint32" and fields["mask"] == "sensor_msgs/Image"
    assert fields["box"] == "sensor_msgs/RegionOfInterest"
    assert fields["polygon"] == "sequence<geometry_msgs/Point32>"
    req = DescribeRegion.Request.get_fields_and_field_types()
    assert {"object_ids", "question", "mode", "stamp", "window_s", "max_frames", "regions",
            "max_new_tokens", "timeout_s"} <= set(req)
    res = DescribeRegion.Response.get_fields_and_field_types()
    assert {"success", "error_code", "message", "text", "frames_used", "tokens_generated",
            "prefill_s", "decode_s", "model_id"} <= set(res)
    assert DescribeRegion.Response.BUSY != DescribeRegion.Response.OK


def test_roundtrip_between_processes(tmp_path) -> None:
    server = start_process(["tests/ros_nodes/echo_describe_server.py"], tmp_path / "server.log")
    rclpy.init()
    try:
        node = rclpy.create_node("interfaces_client")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(RegionPromptArray, "regions", qos)
        client = node.create_client(DescribeRegion, "describe_region")
        assert client.wait_for_service(timeout_sec=20.0), (tmp_path / "server.log").read_text()
        assert spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)

        mask = np.zeros((48, 64), np.uint8)
        mask[10:20, 30:45] = 1  # 150 pixels
        msg = RegionPromptArray()
        msg.header.frame_id = "camera_optical"
        msg.header.stamp = Time(sec=12, nanosec=500)
        region = RegionPrompt(header=msg.header, object_id=7, type=RegionPrompt.TYPE_MASK)
        region.mask = Image(height=48, width=64, encoding="mono8", step=64,
                            data=array.array("B", mask.tobytes()))
        msg.regions = [region]

        request = DescribeRegion.Request(object_ids=[7, 9], question="Is <region> near <region>?",
                                         mode=DescribeRegion.Request.MODE_WINDOW)
        text = ""
        for _ in range(40):  # publish until the server has it (the first may race discovery)
            pub.publish(msg)
            future = client.call_async(request)
            assert spin_until(executor, future.done, 10.0)
            if future.result().success:
                text = future.result().text
                break
        response = future.result()
        assert response.success, response.message
        assert "mask_sum=150" in text and "enc=mono8" in text and "obj=7" in text
        assert "ids=[7, 9]" in text and "mode=2" in text and "frame=camera_optical" in text
        assert [f.object_id for f in response.frames_used] == [7, 9]
        assert response.frames_used[0].stamps[0].sec == 12
        node.destroy_node()
    finally:
        rclpy.shutdown()
        assert stop_process(server) in (0, -2), (tmp_path / "server.log").read_text()


def test_response_defaults_are_failures() -> None:
    """A default-constructed response must not claim success (the node relies on this)."""
    assert DescribeRegion.Response().success is False
