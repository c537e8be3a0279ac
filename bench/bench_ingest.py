"""Ingestion: frames per second refer_node sustains with 1, 4 and 16 tracked objects on a 30 Hz
camera, and the share of frames it has to skip.

    python -m bench.bench_ingest [--model-dir DIR] [--objects 1 4 16] [--seconds 30]
    python -m bench.bench_ingest --preset 2b --objects 1 4 16        # 2B shapes, random weights

Node mode (default): one refer_node, and for each object count a fresh bench publisher (640x480
rgb8 + one mask per object per frame, new object ids each phase). After a warm-up, the node's
own cumulative /diagnostics counters are differenced over `--windows` equal windows; every figure
is the median (min-max) over those windows. Per window:
- received: frames that reached the node (DDS + conversion);
- ingested: frames whose every object got its infused tokens = token jobs / objects;
- skipped share: 1 - ingested / received (never encoded, or encoded but not all objects);
- the node's own `frames_skipped` counter (latest-wins prefetch passed a frame over) next to it.

`--preset 2b` runs the node's FrameBuffer and ModelWorker in-process on random 2B-shaped weights,
fed at 30 Hz by a thread (no ROS: at 2B the 15-40 s per frame of vision work dwarfs it). At
that cost a phase sees only a few frames, so each rate is also predicted from per-stage timings
(global encode + objects x tokenisation, measured first) and both are reported.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from pathlib import Path

import torch

from bench.common import RESULTS, Spread, Timing, load_avg, result_path, save_json, table
from bench.models import random_pipeline, resolve_model_dir
from bench.scenes import make_clip

NS = 1_000_000_000


def window_rates(snaps: list, objects: int) -> list[dict]:
    """Per-window rates from consecutive cumulative snapshots."""
    out = []
    for a, b in itertools.pairwise(snaps):
        dt = b.t - a.t
        received = b.camera["frames_received"] - a.camera["frames_received"]
        tokens = b.worker["token_jobs"] - a.worker["token_jobs"]
        globals_ = b.worker["global_jobs"] - a.worker["global_jobs"]
        skipped = b.worker["frames_skipped"] - a.worker["frames_skipped"]
        out.append({"dt_s": dt, "received_hz": received / dt, "encoded_hz": globals_ / dt,
                    "tokens_per_s": tokens / dt, "ingested_hz": tokens / objects / dt,
                    # clamped: a window can finish frames received in the one before it
                    "skipped_share": min(max(1 - tokens / objects / received, 0.0), 1.0)
                    if received else 1.0,
                    "node_skipped_share": skipped / received if received else 0.0,
                    "regions_hz": (b.camera["regions_received"] - a.camera["regions_received"])
                    / dt, "node_cpu_cores": (b.cpu_s - a.cpu_s) / (b.received - a.received)})
        # what one full core would sustain: the machine is shared, the node got a part of one
        out[-1]["ingested_per_cpu_s"] = out[-1]["ingested_hz"] / out[-1]["node_cpu_cores"]
    return out


def summarize(objects: int, windows: list[dict], extra: dict) -> dict:
    keys = windows[0].keys() if windows else []
    out = {"objects": objects, **{k: Spread.of([w[k] for w in windows]) for k in keys},
           "windows": windows, **extra}
    if windows:  # over the whole phase, where window boundaries no longer matter
        got = sum(w["received_hz"] * w["dt_s"] for w in windows)
        done = sum(w["ingested_hz"] * w["dt_s"] for w in windows)
        out["skipped_share_phase"] = max(1 - done / got, 0.0) if got else 1.0
    return out


# ------------------------------------------------------------------------------ via the node

def via_node(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from bench import node_harness as nh

    env = nh.ros_environment(args.threads)
    model_dir, what = resolve_model_dir(args.model_dir, args.quick)
    logs = Path(args.log_dir)
    node = nh.start_node(model_dir, {"diagnostics_period_s": 0.5,
                                     "buffer_max_objects": max(64, 2 * sum(args.objects))},
                         logs / "ingest_node.log", env)
    probe = nh.Probe()
    rows = []
    try:
        probe.wait_for(lambda s: True, 180.0, node)
        for phase, n in enumerate(args.objects):
            pub = nh.start_publisher(n, args.rate, args.width, args.height,
                                     logs / f"ingest_publisher_{n}.log", env,
                                     id_offset=1000 * (phase + 1))
            try:  # counters are cumulative: wait for this phase's publisher to arrive
                before = probe.next_snapshot(time.monotonic()).camera.get("frames_received", 0)
                probe.wait_for(lambda s, b=before: s.camera.get("frames_received", 0) > b + 3,
                               60.0, node)
                time.sleep(args.warmup)
                snaps = []
                for i in range(args.windows + 1):
                    if i:
                        time.sleep(args.seconds / args.windows)
                    snaps.append(probe.next_snapshot(time.monotonic()))
                    snaps[-1].cpu_s = node.cpu_s()
            finally:
                pub.stop()
            rows.append(summarize(n, window_rates(snaps, n), {
                "node_rss_mib": node.rss_mib(),
                "publisher": pub.tail(300).strip().splitlines()[-1:]}))
            print_row(rows[-1])
            if phase + 1 < len(args.objects):  # the next phase starts from an idle worker
                nh.wait_idle(probe, node, quiet_s=0.6 if args.quick else 1.5)
    finally:
        probe.close()
        node.stop()
    return rows, {"model": what, "model_dir": str(model_dir), "via": "node"}


# ---------------------------------------------------------------------------- via the worker

def via_worker(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The node's buffer + worker in-process on random `args.preset` weights, fed at args.rate."""
    from pixelrefer_ros.buffer import BufferConfig, FrameBuffer
    from pixelrefer_ros.runtime import ModelWorker

    torch.set_num_threads(args.threads)
    pipe = random_pipeline(args.preset)
    stage = stage_costs(pipe, args.width, args.height, args.stage_repeats)
    print(f"stages: global encode {stage['global']}, object tokenisation {stage['object']}",
          flush=True)
    rows = []
    measure = args.measure_objects if args.measure_objects is not None else args.objects
    for n in args.objects:
        predicted = 1.0 / (stage["global"].median_s + n * stage["object"].median_s)
        prediction = {"predicted_ingested_hz": predicted,
                      "predicted_skipped_share": max(0.0, 1 - predicted / args.rate)}
        if n not in measure:
            rows.append(summarize(n, [], prediction))
            print(f"{n:2d} objects: predicted {predicted:.3g} Hz (not run)", flush=True)
            continue
        clip = make_clip(8, n, args.height, args.width, seed=n)
        # The window must outlast one frame's work: frames older than window_s behind the newest
        # are evicted even while being encoded, so with the node's default 10 s a worker that
        # needs longer per frame (2B on this CPU: ~45 s) never ingests anything.
        window_s = max(10.0, 10.0 / predicted)
        buf = FrameBuffer(BufferConfig(max_objects=max(64, n), window_s=window_s))
        worker = ModelWorker(pipe, {"camera": buf})
        worker.start()
        stop = threading.Event()
        fed = feed(buf, worker, clip, args.rate, stop)
        time.sleep(args.warmup)
        snaps = [worker_snapshot(worker, buf, fed)]
        for _ in range(args.windows):
            time.sleep(args.seconds / args.windows)
            snaps.append(worker_snapshot(worker, buf, fed))
        stop.set()
        worker.stop(timeout=3600)  # let a model call in progress finish: torch aborts otherwise
        prediction["buffer_window_s"] = window_s
        rows.append(summarize(n, window_rates(snaps, n), prediction))
        print_row(rows[-1])
    return rows, {"model": f"random {args.preset} shape (in-process worker, no ROS)",
                  "via": "worker", "stages": stage}


def stage_costs(pipe, width: int, height: int, repeats: int) -> dict[str, Timing]:
    """Per-frame global encode and per-(object, frame) tokenisation, as the worker runs them."""
    clip = make_clip(1, 1, height, width)
    image, mask = clip.frames[0], clip.masks[0][0]
    g, o = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            feats = pipe.global_features(image)
            g.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipe.object_tokens(image, mask, feats)
            o.append(time.perf_counter() - t0)
    return {"global": Timing.of(g), "object": Timing.of(o)}


class _Fed:
    frames = 0


def feed(buf, worker, clip, rate: float, stop: threading.Event) -> _Fed:
    """A camera + tracker thread: add_frame + add_region per object at `rate`, like the node's
    callbacks (which only store), then wake the worker."""
    fed = _Fed()

    def run() -> None:
        k, period, t_next = 0, 1.0 / rate, time.monotonic()
        while not stop.is_set():
            stamp = NS + round(k * period * NS)
            i = k % len(clip.frames)
            buf.add_frame(stamp, clip.frames[i])
            for oid, m in enumerate(clip.masks[i]):
                if m.any():
                    buf.add_region(oid, stamp, m)
            fed.frames += 1
            worker.wake()
            k += 1
            t_next += period
            stop.wait(max(0.0, t_next - time.monotonic()))

    threading.Thread(target=run, daemon=True).start()
    return fed


def worker_snapshot(worker, buf, fed: _Fed):
    """The same counters the node publishes, read directly."""
    from bench.node_harness import Snapshot

    w, b = worker.stats(), buf.stats()
    return Snapshot(t=time.monotonic(), received=time.monotonic(), cpu_s=time.process_time(),
                    worker={"token_jobs": w.token_jobs, "global_jobs": w.global_jobs,
                            "frames_skipped": w.frames_skipped},
                    camera={"frames_received": fed.frames, "regions_received": 0.0,
                            "buffer_mbytes": b.bytes_total / 2**20})


def print_row(r: dict) -> None:
    pred = (f", predicted {r['predicted_ingested_hz']:.3g} Hz"
            if "predicted_ingested_hz" in r else "")
    print(f"{r['objects']:2d} objects: received {r['received_hz'].fmt(3)} Hz, ingested "
          f"{r['ingested_hz'].fmt(3)} Hz, skipped {r['skipped_share'].fmt(2, 100)} %{pred}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--preset", default=None, choices=["tiny", "small", "2b", "7b"],
                   help="in-process worker with random weights of this shape instead of the node")
    p.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--measure-objects", type=int, nargs="*", default=None,
                   help="worker: object counts to run (default all); the rest are predicted")
    p.add_argument("--stage-repeats", type=int, default=3, help="worker: stage timing repeats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--log-dir", default=str(RESULTS / "logs"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.objects, args.warmup, args.seconds, args.windows = [2], 0.5, 1.6, 2
        args.width, args.height, args.stage_repeats = 160, 120, 1
        if args.preset:
            args.preset = "tiny"
    load_before = load_avg()
    rows, info = via_worker(args) if args.preset else via_node(args)
    print(f"\n{info['model']}, camera {args.rate:g} Hz {args.width}x{args.height}, "
          f"{args.seconds:g} s per phase in {args.windows} windows, load {load_before:.1f} -> "
          f"{load_avg():.1f}, threads {args.threads}")
    headers = ["objects", "received Hz", "ingested Hz", "object tokens/s", "skipped %",
               "node skip counter %", "node CPU cores", "ingested per CPU-s"]
    body = [[r["objects"], *(r[k].fmt(d, s) if k in r else "not run" for k, d, s in (
        ("received_hz", 3, 1), ("ingested_hz", 3, 1), ("tokens_per_s", 3, 1),
        ("skipped_share", 2, 100), ("node_skipped_share", 2, 100), ("node_cpu_cores", 2, 1),
        ("ingested_per_cpu_s", 3, 1)))] for r in rows]
    if info["via"] == "worker":
        headers.append("predicted Hz (stages)")
        for line, r in zip(body, rows, strict=True):
            line.append(f"{r['predicted_ingested_hz']:.3g}")
    print(table(headers, body))
    save_json(args.json or result_path(f"ingest_{args.preset or 'node'}"), {
        "bench": "ingest", "quick": args.quick, "rate_hz": args.rate,
        "size": [args.width, args.height], "seconds": args.seconds, "windows": args.windows,
        "threads": args.threads, "load_avg_before": load_before, **info, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
