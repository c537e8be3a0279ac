"""A camera + tracker for the node benches: N tracked objects at a fixed rate, as cheap as possible.

    python -m bench.stream_publisher --objects 4 --rate 30 --width 640 --height 480

Publishes `camera/image_raw` (rgb8) and `camera/regions` (one TYPE_MASK RegionPrompt per visible
object, ids `--id-offset` + i) with one header per frame. The messages of a loop of `--loop`
frames are built once; publishing only restamps them, so the publisher's own CPU stays small
next to the node it feeds (both share the same 2 cores here). Prints its achieved rate on exit.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from bench.scenes import make_clip
from pixelrefer_ros.ros import qos
from pixelrefer_ros.ros.conversions import mask_to_image, rgb_to_image
from pixelrefer_ros_interfaces.msg import RegionPrompt, RegionPromptArray


class StreamPublisher(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("bench_stream_publisher")
        clip = make_clip(args.loop, args.objects, args.height, args.width, seed=args.seed)
        self._frames: list[tuple[Image, RegionPromptArray]] = []
        for image, masks in zip(clip.frames, clip.masks, strict=True):
            regions = [RegionPrompt(object_id=args.id_offset + i, type=RegionPrompt.TYPE_MASK,
                                    mask=mask_to_image(m)) for i, m in enumerate(masks) if m.any()]
            self._frames.append((rgb_to_image(image, "rgb8"), RegionPromptArray(regions=regions)))
        self._image_pub = self.create_publisher(Image, "camera/image_raw",
                                                qos.camera_publisher_qos())
        self._regions_pub = self.create_publisher(RegionPromptArray, "camera/regions",
                                                  qos.regions_qos())
        self._k = 0
        self._started = time.monotonic()
        self._deadline = self._started + args.duration if args.duration > 0 else None
        self._timer = self.create_timer(1.0 / args.rate, self.timer_cb)

    def timer_cb(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise SystemExit(0)
        image, regions = self._frames[self._k % len(self._frames)]
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id="camera")
        image.header = header
        regions.header = header
        for r in regions.regions:
            r.header = header
            r.mask.header = header
        self._image_pub.publish(image)
        self._regions_pub.publish(regions)
        self._k += 1

    def report(self) -> str:
        elapsed = time.monotonic() - self._started
        return f"published {self._k} frames in {elapsed:.1f} s ({self._k / elapsed:.1f} Hz)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--loop", type=int, default=30, help="distinct frames, published in a loop")
    p.add_argument("--id-offset", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGINT")
    args = p.parse_args(argv)
    node = None
    try:
        with rclpy.init():
            node = StreamPublisher(args)
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    if node is not None:
        print(node.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
