"""A test server for the interfaces: remembers the last RegionPromptArray and echoes it in
DescribeRegion responses, so a client in another process can check every field travelled."""

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from pixelrefer_ros_interfaces.msg import ObjectFrames, RegionPromptArray
from pixelrefer_ros_interfaces.srv import DescribeRegion


class EchoServer(Node):
    def __init__(self) -> None:
        super().__init__("echo_describe_server")
        self._last: RegionPromptArray | None = None
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._sub = self.create_subscription(RegionPromptArray, "regions", self.regions_cb, qos)
        self._srv = self.create_service(DescribeRegion, "describe_region", self.describe_cb)

    def regions_cb(self, msg: RegionPromptArray) -> None:
        self._last = msg

    def describe_cb(self, request, response):
        if self._last is None:
            response.success = False
            response.error_code = DescribeRegion.Response.NOT_READY
            response.message = "no regions received yet"
            return response
        region = self._last.regions[0]
        mask = np.frombuffer(bytes(region.mask.data), np.uint8).reshape(region.mask.height,
                                                                       region.mask.width)
        response.success = True
        response.error_code = DescribeRegion.Response.OK
        response.text = (f"ids={list(request.object_ids)} q={request.question!r} "
                         f"mode={request.mode} mask_sum={int(mask.sum())} "
                         f"enc={region.mask.encoding} frame={self._last.header.frame_id} "
                         f"obj={region.object_id} inline={len(request.regions)}")
        response.frames_used = [ObjectFrames(object_id=i, stamps=[self._last.header.stamp])
                                for i in request.object_ids]
        response.model_id = "echo"
        return response


def main() -> None:
    rclpy.init()
    node = EchoServer()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
