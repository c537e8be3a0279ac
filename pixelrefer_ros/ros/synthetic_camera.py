"""synthetic_camera: the shapes world as a camera plus a perfect tracker, for demos and tests.

Publishes, all with the SAME header (stamp = node clock at publish time, frame_id parameter):
- `camera/image_raw` (sensor_msgs/Image, rgb8),
- `camera/regions` (RegionPromptArray: one TYPE_MASK RegionPrompt per visible object),
- `camera/ground_truth` (std_msgs/String, JSON: each object's attributes, its description, box
  and centroid in output pixels), so a demo or a test can compare answers with the truth.

Object ids: scenes follow each other (SceneStream), and every scene reuses ids 0..3 for new
objects. So that one id never names two different objects, the published id is
`scene_number * 10 + scene object id` (scene_number = 0, 1, 2, ... since start); the JSON
carries both.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from pixelrefer_ros.ros import qos
from pixelrefer_ros.ros.conversions import mask_to_image, rgb_to_image, stamp_to_ns
from pixelrefer_ros.synthetic import SceneStream, StreamFrame, WorldConfig, describe
from pixelrefer_ros_interfaces.msg import RegionPrompt, RegionPromptArray

IDS_PER_SCENE = 10  # > WorldConfig.max_objects (4)

PARAMS = {  # name: (default, description)
    "rate_hz": (10.0, "frames per second"),
    "width": (320, "image width in pixels (scenes are drawn at 224..320 and resized)"),
    "height": (240, "image height in pixels"),
    "seed": (0, "seed of the first scene; scene k uses seed + k"),
    "frames_per_scene": (16, "frames of each scene before the next one starts (1..16)"),
    "frame_id": ("camera", "header.frame_id of everything published"),
}


def ground_truth(frame: StreamFrame, ids: list[int], stamp_ns: int, frame_id: str) -> dict:
    """The JSON document published with a frame (coordinates in output pixels)."""
    sx, sy = frame.scale
    t = frame.frame_index
    objects = []
    for obj, oid in zip(frame.objects, ids, strict=True):
        x0, y0, x1, y1 = (float(v) for v in obj.bboxes[t])
        cx, cy = (float(v) for v in obj.centroids[t])
        objects.append({
            "object_id": oid, "scene_object_id": obj.id, "shape": obj.shape,
            "color": obj.color, "size": obj.size, "motion": obj.motion,
            "description": describe(obj, with_motion=True),
            "description_still": describe(obj, with_motion=False),
            "bbox": [round(x0 * sx, 1), round(y0 * sy, 1), round(x1 * sx, 1), round(y1 * sy, 1)],
            "centroid": [round(cx * sx, 1), round(cy * sy, 1)],
            "visible_px": int(frame.masks[obj.id].sum()),
        })
    return {"stamp_ns": stamp_ns, "frame_id": frame_id, "scene_seed": frame.scene_seed,
            "frame_index": t, "min_relation_dx": 40.0 * sx, "objects": objects}


class SyntheticCamera(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("synthetic_camera", **kwargs)
        for name, (default, doc) in PARAMS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=doc,
                                                                      read_only=True))
        p = {name: self.get_parameter(name).value for name in PARAMS}
        if not p["rate_hz"] > 0 or p["width"] < 1 or p["height"] < 1:
            raise ValueError(f"need rate_hz > 0 and a positive size, got {p}")
        self._seed = int(p["seed"])
        self._frame_id = str(p["frame_id"])
        self._stream = SceneStream(self._seed, WorldConfig(num_frames=int(p["frames_per_scene"])),
                                   size=(int(p["width"]), int(p["height"])))
        self._image_pub = self.create_publisher(Image, "camera/image_raw",
                                                qos.camera_publisher_qos())
        self._regions_pub = self.create_publisher(RegionPromptArray, "camera/regions",
                                                  qos.regions_qos())
        self._truth_pub = self.create_publisher(String, "camera/ground_truth",
                                                qos.regions_qos())
        self._timer = self.create_timer(1.0 / p["rate_hz"], self.timer_cb)
        self.get_logger().info(f"publishing {p['width']}x{p['height']} at {p['rate_hz']} Hz, "
                               f"{p['frames_per_scene']} frames per scene, seed {self._seed}")

    def timer_cb(self) -> None:
        frame = next(self._stream)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._frame_id)
        base = (frame.scene_seed - self._seed) * IDS_PER_SCENE
        ids = [base + obj.id for obj in frame.objects]
        regions = [RegionPrompt(header=header, object_id=oid, type=RegionPrompt.TYPE_MASK,
                                mask=mask_to_image(frame.masks[obj.id], header))
                   for obj, oid in zip(frame.objects, ids, strict=True)
                   if np.any(frame.masks[obj.id])]
        truth = ground_truth(frame, ids, stamp_to_ns(header.stamp), self._frame_id)
        self._image_pub.publish(rgb_to_image(frame.image, "rgb8", header))
        self._regions_pub.publish(RegionPromptArray(header=header, regions=regions))
        self._truth_pub.publish(String(data=json.dumps(truth)))


def main(args: list[str] | None = None) -> int:
    try:
        with rclpy.init(args=args):
            try:
                node = SyntheticCamera()
            except Exception as exc:  # bad parameter: say why and exit 1
                rclpy.logging.get_logger("synthetic_camera").fatal(f"cannot start: {exc}")
                return 1
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
