"""Soak run (not in CI): refer_node + synthetic_camera for N minutes, a describe call every
PERIOD seconds (single frame, video window and relation in turn), then latency percentiles,
result codes and the node's memory over time: RSS samples and their least-squares slope, so a
leak shows up as MiB per minute rather than as an OOM a day later.

    python scripts/soak.py [--minutes 10] [--model-dir CKPT | --tiny] [--rate 10] [--period 1]

--tiny runs the tiny random-weight test checkpoint (plumbing, buffer and memory behaviour; the
answers are noise). Prints a summary and writes JSON to bench/results/ (or --json). Exits 1 if a
call went unanswered or the node died.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from scripts.demo import find_model, ros_env, start, stop  # noqa: E402

PERCENTILES = (50, 90, 95, 99)
RSS_WARMUP_S = 30.0  # allocator and DDS pools settle first; the slope is fitted after this


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--model-dir", default="", help="checkpoint (default: the built-in model)")
    p.add_argument("--tiny", action="store_true", help="the tiny random-weight test checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rate", type=float, default=10.0, help="camera frame rate (Hz)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--period", type=float, default=1.0, help="seconds between describe calls")
    p.add_argument("--timeout-s", type=float, default=5.0, help="timeout_s of each call")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sample-s", type=float, default=5.0, help="memory sample period (s)")
    p.add_argument("--json", type=Path, default=None,
                   help="output (default bench/results/soak_<minutes>min.json)")
    return p.parse_args()


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None  # the process is gone


class SoakClient:
    """Ground truth (the current objects), /diagnostics (the node's own numbers) and calls."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from pixelrefer_ros.ros import qos
        from pixelrefer_ros_interfaces.srv import DescribeRegion

        rclpy.init()
        self.srv = DescribeRegion
        self.node = rclpy.create_node("pixelrefer_soak")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.objects: list[int] = []  # ids in the newest frame
        self.diag: dict[str, dict[str, str]] = {}  # status name suffix -> values
        self.node.create_subscription(String, "camera/ground_truth", self.truth_cb,
                                      qos.regions_qos())
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag_cb,
                                      qos.diagnostics_qos())
        self.client = self.node.create_client(DescribeRegion, "describe_region")

    def truth_cb(self, msg) -> None:
        objects = json.loads(msg.data)["objects"]
        self.objects = [o["object_id"] for o in objects if o["visible_px"] > 0]

    def diag_cb(self, msg) -> None:
        for s in msg.status:
            key = "worker" if s.name.endswith("model worker") else "camera"
            self.diag[key] = {kv.key: kv.value for kv in s.values}

    def spin(self, seconds: float, until=lambda: False) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            self.executor.spin_once(timeout_sec=0.02)
        return until()

    def request(self, kind: str, timeout_s: float, max_new_tokens: int):
        req = self.srv.Request
        ids = self.objects[:2] if kind == "relation" else self.objects[:1]
        fields = {"object_ids": ids, "timeout_s": timeout_s, "max_new_tokens": max_new_tokens}
        if kind == "relation":
            fields["question"] = "Is <region> to the left of <region>?"
        if kind == "video":
            fields.update(mode=req.MODE_WINDOW, window_s=2.0, max_frames=4)
        return req(**fields)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def slope_mib_per_min(samples: list[dict]) -> float | None:
    pts = [(s["t_s"] / 60, s["node_rss_mib"]) for s in samples
           if s["t_s"] >= RSS_WARMUP_S and s["node_rss_mib"] is not None]
    if len(pts) < 3:
        return None
    t, rss = np.array(pts).T
    return float(np.polyfit(t, rss, 1)[0])


def summarize(calls: list[dict], samples: list[dict], args, wall_s: float) -> dict:
    ok = [c["latency_s"] for c in calls if c["code"] == "OK"]
    codes = collections.Counter(c["code"] for c in calls)
    by_kind = {k: collections.Counter(c["code"] for c in calls if c["kind"] == k)
               for k in ("single", "video", "relation")}
    lat = {f"p{q}": float(np.percentile(ok, q)) for q in PERCENTILES} if ok else {}
    lat |= {"max": max(ok), "mean": float(np.mean(ok))} if ok else {}
    rss = [s["node_rss_mib"] for s in samples if s["node_rss_mib"] is not None]
    return {
        "bench": "soak", "minutes": args.minutes, "wall_s": round(wall_s, 1),
        "settings": {"rate_hz": args.rate, "size": [args.width, args.height],
                     "period_s": args.period, "timeout_s": args.timeout_s,
                     "max_new_tokens": args.max_new_tokens, "tiny": args.tiny},
        "calls": len(calls), "codes": dict(codes), "codes_by_kind": by_kind,
        "unanswered": sum(c["code"] == "UNANSWERED" for c in calls),
        "latency_ok_s": lat,
        "node_rss_mib": {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                         "min": min(rss, default=None), "max": max(rss, default=None),
                         "slope_mib_per_min_after_warmup": slope_mib_per_min(samples)},
        "samples": samples,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
    }


def print_summary(r: dict) -> None:
    lat, rss = r["latency_ok_s"], r["node_rss_mib"]
    print(f"\nsoak: {r['wall_s']:.0f} s, {r['calls']} calls, codes {r['codes']}, unanswered "
          f"{r['unanswered']}")
    if lat:
        print("latency of OK calls (client wall time, s): " + ", ".join(
            f"{k} {v:.3f}" for k, v in lat.items()))
    slope = rss["slope_mib_per_min_after_warmup"]
    print(f"node RSS MiB: first {rss['first']:.0f}, min {rss['min']:.0f}, max {rss['max']:.0f}, "
          f"last {rss['last']:.0f}; slope after {RSS_WARMUP_S:.0f} s: "
          f"{'n/a' if slope is None else f'{slope:+.2f} MiB/min'}")
    print("t_s   node_rss_mib  buffer_mib  queue  frames_received  token_jobs")
    for s in r["samples"][::max(len(r["samples"]) // 12, 1)]:
        print(f"{s['t_s']:5.0f} {s['node_rss_mib'] or 0:12.0f} {s['buffer_mib']:11} "
              f"{s['queue_depth']:6} {s['frames_received']:16} {s['token_jobs']:11}")


def run(client: SoakClient, node_pid: int, args) -> tuple[list[dict], list[dict], float]:
    calls: list[dict] = []
    samples: list[dict] = []
    kinds = ("single", "video", "relation")
    start_t = time.monotonic()
    end_t = start_t + args.minutes * 60
    next_sample = start_t
    i = 0
    while time.monotonic() < end_t:
        now = time.monotonic()
        if now >= next_sample:
            cam, wrk = client.diag.get("camera", {}), client.diag.get("worker", {})
            samples.append({"t_s": round(now - start_t, 1), "node_rss_mib": rss_mib(node_pid),
                            "buffer_mib": cam.get("buffer_mbytes", "n/a"),
                            "queue_depth": wrk.get("queue_depth", "n/a"),
                            "frames_received": cam.get("frames_received", "n/a"),
                            "token_jobs": wrk.get("token_jobs", "n/a")})
            next_sample += args.sample_s
            if samples[-1]["node_rss_mib"] is None:
                print("soak: refer_node is gone")
                break
        kind = kinds[i % len(kinds)]
        if (kind == "relation" and len(client.objects) < 2) or not client.objects:
            kind = "single" if client.objects else None
        if kind is not None:
            req = client.request(kind, args.timeout_s, args.max_new_tokens)
            t0 = time.monotonic()
            fut = client.client.call_async(req)
            done = client.spin(args.timeout_s + 10.0, fut.done)
            resp = fut.result() if done else None
            calls.append({"t_s": round(t0 - start_t, 2), "kind": kind,
                          "code": code_name(client, resp), "latency_s": time.monotonic() - t0,
                          "node_total_s": resp.total_s if resp else None})
            i += 1
        client.spin(max(args.period - (time.monotonic() - now), 0.0))
    return calls, samples, time.monotonic() - start_t


def code_name(client: SoakClient, resp) -> str:
    if resp is None:
        return "UNANSWERED"
    r = client.srv.Response
    return next(k for k in dir(r) if k.isupper() and getattr(r, k) == resp.error_code)


def main() -> int:
    args = parse_args()
    if args.tiny:
        from tests.tiny_model import write_tiny_checkpoint

        model = write_tiny_checkpoint(Path(tempfile.gettempdir()) / "pixelrefer_soak_tiny")
    else:
        model = find_model(args.model_dir)
    env = ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                           "FASTDDS_DEFAULT_PROFILES_FILE")})
    logs = Path(tempfile.gettempdir()) / f"pixelrefer_soak_{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    out = args.json or REPO / "bench" / "results" / f"soak_{args.minutes:g}min.json"
    print(f"soak: {args.minutes:g} min, model {model}, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, "
          f"logs in {logs}")
    node = start("pixelrefer_ros.ros.refer_node",
                 ["--params-file", str(REPO / "config" / "refer.yaml"), "-p",
                  f"model_dir:={model}", "-p", f"device:={args.device}"],
                 logs / "refer_node.log", env)
    camera = start("pixelrefer_ros.ros.synthetic_camera",
                   ["-p", f"rate_hz:={args.rate}", "-p", f"width:={args.width}", "-p",
                    f"height:={args.height}"], logs / "synthetic_camera.log", env)
    client = None
    try:
        client = SoakClient()
        if not client.client.wait_for_service(timeout_sec=120):
            print(f"soak: /describe_region never came up; see {logs / 'refer_node.log'}")
            return 1
        if not client.spin(60, lambda: client.objects and "camera" in client.diag):
            print("soak: no frames or diagnostics from the nodes within 60 s")
            return 1
        calls, samples, wall_s = run(client, node.pid, args)
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
    result = summarize(calls, samples, args, wall_s)
    result["node_exit_code"] = node.returncode
    print_summary(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"soak: wrote {out}")
    alive = samples and samples[-1]["node_rss_mib"] is not None
    return 0 if alive and result["unanswered"] == 0 and node.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
