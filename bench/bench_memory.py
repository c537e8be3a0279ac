"""Memory under a long stream: refer_node's resident memory over a 5-minute 30 Hz stream with 4
tracked objects must be flat once the buffer is full; its own byte accounting is shown next to it.

    python -m bench.bench_memory [--model-dir DIR] [--minutes 5] [--objects 4]

Samples every `--interval` s: the node's VmRSS (/proc) and, from /diagnostics, the buffer's bytes
(images + features + masks + tokens), frames and token sets. The slope is a least-squares fit
of RSS against time after `--warmup` s (the buffer fills within its 10 s window; the allocator
settles a little later), in MiB per minute; its spread is the slope of each of `--segments`
equal parts of that span (median, min-max). A flat process has a slope near 0 and no upward
trend across segments.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, Spread, load_avg, result_path, save_json, table
from bench.models import resolve_model_dir


def slope_per_min(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y over t (seconds) in units per minute, and its standard error."""
    if len(t) < 3:
        return float("nan"), float("nan")
    a = np.vstack([t, np.ones_like(t)]).T
    coef, res, *_ = np.linalg.lstsq(a, y, rcond=None)
    dof = len(t) - 2
    sigma2 = float(res[0]) / dof if len(res) and dof > 0 else 0.0
    se = np.sqrt(sigma2 / np.sum((t - t.mean()) ** 2))
    return float(coef[0]) * 60, float(se) * 60


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the fit")
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--log-dir", default=str(RESULTS / "logs"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.interval, args.warmup, args.segments = 0.08, 0.5, 1.5, 2
        args.width, args.height = 160, 120

    from bench import node_harness as nh

    env = nh.ros_environment(args.threads)
    model_dir, what = resolve_model_dir(args.model_dir, args.quick)
    logs = Path(args.log_dir)
    load_before = load_avg()
    node = nh.start_node(model_dir, {"diagnostics_period_s": min(1.0, args.interval)},
                         logs / "memory_node.log", env)
    probe = nh.Probe()
    samples: list[dict] = []
    try:
        probe.wait_for(lambda s: True, 180.0, node)
        rss_idle = node.rss_mib()
        pub = nh.start_publisher(args.objects, args.rate, args.width, args.height,
                                 logs / "memory_publisher.log", env)
        try:
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < args.minutes * 60:
                snap = probe.latest()
                samples.append({
                    "t_s": elapsed, "rss_mib": node.rss_mib(), "load_avg_1m": load_avg(),
                    "buffer_mib": snap.camera.get("buffer_mbytes") if snap else None,
                    "buffer_frames": snap.camera.get("buffer_frames") if snap else None,
                    "token_sets": snap.camera.get("token_sets") if snap else None,
                    "frames_received": snap.camera.get("frames_received") if snap else None,
                    "token_jobs": snap.worker.get("token_jobs") if snap else None})
                if not node.alive():
                    raise RuntimeError(f"refer_node exited:\n{node.tail()}")
                time.sleep(args.interval)
        finally:
            pub.stop()
    finally:
        probe.close()
        node.stop()

    steady = [s for s in samples if s["t_s"] >= args.warmup]
    t = np.array([s["t_s"] for s in steady])
    rss = np.array([s["rss_mib"] for s in steady])
    buf = np.array([s["buffer_mib"] or 0.0 for s in steady])
    slope, se = slope_per_min(t, rss)
    buf_slope, _ = slope_per_min(t, buf)
    # what the process holds beyond the buffer's own bytes: the trend a leak would show in
    rest_slope, rest_se = slope_per_min(t, rss - buf)
    parts = np.array_split(np.arange(len(t)), args.segments)
    seg_slopes = [slope_per_min(t[i], rss[i])[0] for i in parts if len(i) >= 3]
    last = samples[-1] if samples else {}
    result = {
        "rss_idle_mib": rss_idle, "rss_steady": Spread.of(list(rss)),
        "rss_slope_mib_per_min": slope, "rss_slope_stderr": se,
        "rss_segment_slopes": Spread.of(seg_slopes),
        "rss_first_last_steady_mib": [float(rss[0]), float(rss[-1])] if len(rss) else None,
        "buffer_steady_mib": Spread.of(list(buf)), "buffer_slope_mib_per_min": buf_slope,
        "rss_minus_buffer_slope_mib_per_min": rest_slope, "rss_minus_buffer_stderr": rest_se,
        "buffer_frames_steady": Spread.of([s["buffer_frames"] or 0 for s in steady]),
        "token_sets_steady": Spread.of([s["token_sets"] or 0 for s in steady]),
        "frames_received": last.get("frames_received"), "token_jobs": last.get("token_jobs"),
    }
    print(f"\n{what}: {args.minutes:g} min at {args.rate:g} Hz, {args.objects} objects, "
          f"{args.width}x{args.height}; {len(samples)} samples, fit after {args.warmup:g} s; "
          f"load {load_before:.1f} -> {load_avg():.1f}, threads {args.threads}")
    print(table(["figure", "value"], [
        ["node RSS idle (before the stream)", f"{rss_idle:.0f} MiB"],
        ["node RSS, steady part", result["rss_steady"].fmt(4) + " MiB"],
        ["RSS slope (least squares)", f"{slope:+.3f} ± {se:.3f} MiB/min"],
        ["RSS slope per segment", result["rss_segment_slopes"].fmt(3) + " MiB/min"],
        ["buffer's own accounting, steady", result["buffer_steady_mib"].fmt(3) + " MiB"],
        ["buffer slope", f"{buf_slope:+.3f} MiB/min"],
        ["RSS minus buffer accounting, slope", f"{rest_slope:+.3f} ± {rest_se:.3f} MiB/min"],
        ["buffered frames / token sets", f"{result['buffer_frames_steady'].fmt(3)} / "
         f"{result['token_sets_steady'].fmt(3)}"],
        ["frames received / token jobs", f"{last.get('frames_received')} / "
         f"{last.get('token_jobs')}"]]))
    save_json(args.json or result_path("memory"), {
        "bench": "memory", "quick": args.quick, "model": what, "model_dir": str(model_dir),
        "minutes": args.minutes, "rate_hz": args.rate, "objects": args.objects,
        "size": [args.width, args.height], "threads": args.threads,
        "load_avg_before": load_before, "results": result, "samples": samples})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
