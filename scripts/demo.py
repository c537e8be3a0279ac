"""`make demo`: refer_node + synthetic_camera, three questions, answers next to the ground truth.

Starts both nodes as subprocesses on loopback in a ROS domain of their own, waits until the
buffer holds object tokens, then asks /describe_region in single-frame mode, in video mode and
about a relation between two objects, and prints each answer beside the truth the camera
published. Exits 0 when all three calls were answered (the words are only as good as the model),
non-zero otherwise; never runs longer than --timeout seconds.

    python scripts/demo.py [--model-dir CHECKPOINT] [--timeout 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEO_MIN_FRAMES = 8  # the video question waits for a scene with this many frames on camera
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="", help="checkpoint (default: the built-in "
                   "models/shapes)")
    p.add_argument("--timeout", type=float, default=120.0, help="total time limit (s)")
    p.add_argument("--rate", type=float, default=5.0, help="camera frame rate (Hz); a scene "
                   "lasts 16 frames")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def find_model(model_dir: str) -> Path:
    from pixelrefer_ros.ros.refer_node import resolve_model_dir

    try:
        path = resolve_model_dir(model_dir)
    except FileNotFoundError as exc:
        sys.exit(f"demo: {exc}\n(or run with --model-dir <checkpoint>)")
    if not (path / "config.json").is_file():
        sys.exit(f"demo: {path} is not a checkpoint directory (no config.json); pass "
                 "--model-dir <checkpoint> or leave it out for the built-in shapes model")
    return path


def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # never off the loopback
    env.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 60))
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_shm.xml"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(module: str, ros_args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Client:
    """Ground-truth listener and /describe_region caller."""

    def __init__(self, deadline: float) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from pixelrefer_ros.ros import qos
        from pixelrefer_ros_interfaces.srv import DescribeRegion

        self.deadline = deadline
        self.srv = DescribeRegion
        rclpy.init()
        self.node = rclpy.create_node("pixelrefer_demo")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.truth: dict[int, dict] = {}  # stamp_ns -> ground truth of that frame
        self.node.create_subscription(String, "camera/ground_truth", self.truth_cb,
                                      qos.regions_qos())
        self.client = self.node.create_client(DescribeRegion, "describe_region")

    def truth_cb(self, msg) -> None:
        gt = json.loads(msg.data)
        self.truth[gt["stamp_ns"]] = gt
        if len(self.truth) > 400:
            self.truth.pop(min(self.truth))

    def spin_until(self, predicate, limit: float) -> bool:
        end = min(self.deadline, time.monotonic() + limit)
        while time.monotonic() < end and not predicate():
            self.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def ask(self, **fields):
        fut = self.client.call_async(self.srv.Request(**fields))
        if not self.spin_until(fut.done, 60.0):
            raise TimeoutError(f"no answer to {fields}")
        return fut.result()

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def frames_used(resp) -> dict[int, list[int]]:
    return {f.object_id: [s.sec * 1_000_000_000 + s.nanosec for s in f.stamps]
            for f in resp.frames_used}


def truth_of(client: Client, stamp: int, oid: int) -> dict | None:
    gt = client.truth.get(stamp)
    return next((o for o in gt["objects"] if o["object_id"] == oid), None) if gt else None


def scene_frames_since(client: Client, since_ns: int) -> int:
    """Frames of the newest scene published at or after `since_ns` (the node was answering by
    then, so it saw them), counted back while the scene's frame index runs down by one; 0
    while the scene has no object."""
    count, expected = 0, None
    for stamp in sorted(client.truth, reverse=True):
        gt = client.truth[stamp]
        if stamp < since_ns or not gt["objects"] or expected not in (None, gt["frame_index"]):
            break
        count, expected = count + 1, gt["frame_index"] - 1
    return count


def left_of_truth(client: Client, stamp: int, a: int, b: int) -> str:
    gt = client.truth.get(stamp)
    oa, ob = truth_of(client, stamp, a), truth_of(client, stamp, b)
    if not (gt and oa and ob):
        return "(frame not seen)"
    dx = ob["centroid"][0] - oa["centroid"][0]
    return "ambiguous" if abs(dx) < gt["min_relation_dx"] else ("yes" if dx > 0 else "no")


def show(title: str, resp, truth: str) -> None:
    status = "OK" if resp.success else f"ERROR {resp.error_code}: {resp.message}"
    print(f"\n== {title}\n   frames used : {frames_used(resp)}\n   answer      : {resp.text!r}"
          f"\n   truth       : {truth}\n   status      : {status}; total {resp.total_s:.3f} s "
          f"(queue {resp.queue_s:.3f}, vision {resp.vision_s:.3f}, prefill "
          f"{resp.prefill_s:.3f}, decode {resp.decode_s:.3f}); model {resp.model_id}")


def run_demo(client: Client) -> bool:
    from pixelrefer_ros.ros.conversions import ns_to_stamp

    if not client.client.wait_for_service(timeout_sec=max(client.deadline - time.monotonic(), 1)):
        print("demo: /describe_region did not come up (see the node log)")
        return False
    if not client.spin_until(lambda: client.truth, 30.0):
        print("demo: no frames from the synthetic camera")
        return False
    req = client.srv.Request
    # Wait until the buffer holds tokens for an object of the current scene.
    resp, oid = None, None
    while time.monotonic() < client.deadline:
        newest = client.truth[max(client.truth)]
        if newest["objects"]:
            oid = newest["objects"][0]["object_id"]
            resp = client.ask(object_ids=[oid], mode=req.MODE_LATEST, timeout_s=5.0)
            if resp.success:
                break
        client.spin_until(lambda: False, 0.2)
    if resp is None or not resp.success:
        print(f"demo: no tokens in the buffer in time ({resp.message if resp else 'no answer'})")
        return False
    stamp = frames_used(resp)[oid][0]
    gt = truth_of(client, stamp, oid) or {}
    show(f"single frame: object {oid}", resp, gt.get("description_still", "?"))
    ok = resp.success
    # Video: an object of a scene that has been on camera for VIDEO_MIN_FRAMES frames since the
    # first answer (the camera may have started before the node), over the last 3 s (frames of
    # the previous scene hold other ids, so only this scene's frames count).
    if not client.spin_until(lambda: scene_frames_since(client, stamp) >= VIDEO_MIN_FRAMES,
                             30.0):
        print(f"demo: no scene lasted {VIDEO_MIN_FRAMES} frames")
        return False
    newest = max(client.truth)
    vid = client.truth[newest]["objects"][0]["object_id"]
    resp = client.ask(object_ids=[vid], mode=req.MODE_WINDOW, stamp=ns_to_stamp(newest),
                      window_s=3.0, max_frames=8)
    gt = truth_of(client, newest, vid) or {}
    show(f"video: object {vid}", resp, gt.get("description", "?"))
    ok &= resp.success
    newest = client.truth[max(client.truth)]
    if len(newest["objects"]) >= 2:
        a, b = (o["object_id"] for o in newest["objects"][:2])
        question = "Is <region> to the left of <region>?"
        resp = client.ask(object_ids=[a, b], question=question, mode=req.MODE_LATEST)
        used = frames_used(resp)
        truth = left_of_truth(client, used[a][0], a, b) if resp.success else "-"
        show(f"relation: {question} with {a}, {b}", resp, truth)
        ok &= resp.success
    else:
        print("\n== relation: skipped, the current scene has a single object")
    return ok


def main() -> int:
    args = parse_args()
    deadline = time.monotonic() + args.timeout
    model = find_model(args.model_dir)
    env = ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                           "FASTDDS_DEFAULT_PROFILES_FILE")})
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"pixelrefer_demo_{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"demo: model {model}, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, logs in {logs}")
    node = start("pixelrefer_ros.ros.refer_node",
                 ["--params-file", str(REPO / "config" / "refer.yaml"), "-p",
                  f"model_dir:={model}", "-p", f"device:={args.device}"],
                 logs / "refer_node.log", env)
    camera = start("pixelrefer_ros.ros.synthetic_camera", ["-p", f"rate_hz:={args.rate}"],
                   logs / "synthetic_camera.log", env)
    client = None
    ok = False
    try:
        client = Client(deadline)
        ok = run_demo(client)
    except (TimeoutError, KeyboardInterrupt) as exc:
        print(f"demo: stopped: {exc!r}")
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
    if not ok:
        tail = (logs / "refer_node.log").read_text()[-2000:]
        print(f"\ndemo FAILED; refer_node log tail:\n{tail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
