"""Describe latency vs history: a video question over 1, 8 and 32 buffered frames of one object,
against prefill + decode of the same token sequence on the bare LLM (target ratio <= 1.15).

    python -m bench.bench_history                                   # through refer_node
    python -m bench.bench_history --via worker --preset 2b --llm-layers 4 --repeats 3

The infused object tokens are computed as frames arrive, so a describe request should cost the
LLM alone whatever the history. `--via node` (default) starts refer_node and the bench
publisher, lets the buffer fill with tokens, stops the camera and calls /describe_region
(MODE_WINDOW, max_frames = history): the client round trip includes DDS, the service, queueing,
buffer lookups, prompt building and splicing. `--via worker` runs the node's ModelWorker and
FrameBuffer in-process with random 2B-shaped weights and precomputed random tokens (no vision
work, no ROS): the server-side overhead at 2B widths. Each repeat pairs one describe with one bare
run of `model.generate.generate` on a prompt of the same length for the same number of steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, Spread, load_avg, result_path, save_json, table
from bench.models import random_pipeline, resolve_model_dir
from pixelrefer_ros.model.generate import generate
from pixelrefer_ros.model.llm import Qwen2

NS = 1_000_000_000
FRAME_PERIOD_NS = NS // 30


def bare_llm_s(llm: Qwen2, prompt_tokens: int, steps: int) -> float:
    """Wall time of prefill + `steps` decode steps on the bare LLM (random prompt embeddings:
    the cost does not depend on their values; eos disabled so the step count is exact)."""
    embeds = torch.randn(prompt_tokens, llm.cfg.hidden_size, dtype=llm.embed_tokens.weight.dtype)
    t0 = time.perf_counter()
    res = generate(llm, embeds * 0.02, max_new_tokens=steps, eos_id=-1)
    elapsed = time.perf_counter() - t0
    assert len(res.token_ids) == steps
    return elapsed


def llm_steps(tokens_generated: int, stop_reason: str) -> int:
    """Decode decisions a describe made: one per token, plus the one that chose eos."""
    return max(tokens_generated + (stop_reason == "eos"), 1)


def run_pairs(describe: Callable[[int], dict], llm: Qwen2, histories: list[int],
              repeats: int) -> list[dict]:
    """For each history: a warm-up, then `repeats` (describe, bare LLM) pairs, interleaved so
    that a change of machine load hits both sides alike."""
    rows = []
    for h in histories:
        first = describe(h)  # warm-up (allocations, first-call paths)
        bare_llm_s(llm, first["prompt_tokens"], llm_steps(first["tokens_generated"],
                                                           first["stop_reason"]))
        samples = []
        for _ in range(repeats):
            d = describe(h)
            d["bare_s"] = bare_llm_s(llm, d["prompt_tokens"],
                                     llm_steps(d["tokens_generated"], d["stop_reason"]))
            samples.append(d)
        rows.append(summarize(h, samples))
        print(f"history {h:3d}: describe {rows[-1]['describe_s'].fmt(3, 1e3)} ms, bare LLM "
              f"{rows[-1]['bare_s'].fmt(3, 1e3)} ms, ratio {rows[-1]['ratio']:.3f}", flush=True)
    return rows


def summarize(h: int, samples: list[dict]) -> dict:
    def spread(key: str) -> Spread:
        return Spread.of([s[key] for s in samples])

    describe, bare = spread("describe_s"), spread("bare_s")
    return {
        "history_frames": h, "prompt_tokens": samples[0]["prompt_tokens"],
        "tokens_generated": Spread.of([s["tokens_generated"] for s in samples]),
        "describe_s": describe, "server_total_s": spread("total_s"), "queue_s": spread("queue_s"),
        "vision_s": spread("vision_s"), "prefill_s": spread("prefill_s"),
        "decode_s": spread("decode_s"), "bare_s": bare,
        "ratio": describe.median / bare.median,  # the headline: ratio of medians
        # minima: the runs least disturbed by the other jobs on a shared machine
        "ratio_min": describe.min / bare.min,
        "ratio_server": spread("total_s").median / bare.median,
        "ratio_paired": Spread.of([s["describe_s"] / s["bare_s"] for s in samples]),
        "samples": samples,
    }


# ------------------------------------------------------------------------------ via the node

def via_node(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from bench import node_harness as nh

    env = nh.ros_environment(args.threads)
    from pixelrefer_ros.model.loader import load_checkpoint
    from pixelrefer_ros_interfaces.srv import DescribeRegion

    model_dir, what = resolve_model_dir(args.model_dir, args.quick)
    llm = load_checkpoint(model_dir, "float32").model.llm  # the bare LLM: same weights
    hmax = max(args.history)
    logs = Path(args.log_dir)
    node = nh.start_node(model_dir, {
        "video_max_frames": hmax, "video_window_s": 10.0, "max_new_tokens": args.new_tokens,
        "request_timeout_s": 600.0, "diagnostics_period_s": 0.5}, logs / "history_node.log", env)
    probe = nh.Probe()
    try:
        probe.wait_for(lambda s: True, 180.0, node)
        # a slow camera: every frame gets its tokens (ingestion is bench_ingest's business)
        pub = nh.start_publisher(1, args.fill_rate_hz, args.width, args.height,
                                 logs / "history_publisher.log", env)
        probe.wait_for(lambda s: s.camera.get("token_sets", 0) >= hmax + 2, 600.0, node)
        pub.stop()
        nh.wait_idle(probe, node, quiet_s=0.6 if args.quick else 1.5)

        def describe(h: int) -> dict:
            req = DescribeRegion.Request(object_ids=[0], mode=DescribeRegion.Request.MODE_WINDOW,
                                         window_s=10.0, max_frames=h,
                                         max_new_tokens=args.new_tokens, timeout_s=600.0)
            res, round_trip = probe.describe(req)
            if not res.success:
                raise RuntimeError(f"describe failed: {res.message}")
            used = len(res.frames_used[0].stamps)
            if used != h:
                raise RuntimeError(f"asked for {h} frames, the node used {used}")
            return {"describe_s": round_trip, "total_s": res.total_s, "queue_s": res.queue_s,
                    "vision_s": res.vision_s, "prefill_s": res.prefill_s,
                    "decode_s": res.decode_s, "prompt_tokens": res.prompt_tokens,
                    "tokens_generated": res.tokens_generated, "stop_reason": res.stop_reason}

        rows = run_pairs(describe, llm, args.history, args.repeats)
        snap = probe.latest()
        node_rss = node.rss_mib()
    finally:
        probe.close()
        node.stop()
    return rows, {"model": what, "model_dir": str(model_dir), "node_rss_mib": node_rss,
                  "token_sets": snap.camera.get("token_sets") if snap else None}


# ---------------------------------------------------------------------------- via the worker

def via_worker(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from pixelrefer_ros.buffer import BufferConfig, FrameBuffer
    from pixelrefer_ros.runtime import DescribeJob, Mode, ModelWorker

    torch.set_num_threads(args.threads)
    pipe = random_pipeline(args.preset, args.llm_layers)
    hmax = max(args.history)
    cfg = BufferConfig(window_s=1e3, max_frames=hmax + 4, keep_raw_s=1e3, prefetch_global=False)
    buf = FrameBuffer(cfg)
    fill_buffer(buf, hmax, pipe.tokens_per_object, pipe.config.llm.hidden_size)
    worker = ModelWorker(pipe, {"camera": buf})
    worker.start()

    def describe(h: int) -> dict:
        t0 = time.perf_counter()
        fut = worker.submit(DescribeJob(camera="camera", object_ids=(0,),
                                        deadline=time.monotonic() + 3600, mode=Mode.WINDOW,
                                        window_s=1e3, max_frames=h,
                                        max_new_tokens=args.new_tokens))
        res = fut.result()
        elapsed = time.perf_counter() - t0
        if not res.success or len(res.frames_used[0].stamps_ns) != h:
            raise RuntimeError(f"describe failed: {res.code.name} {res.message}")
        return {"describe_s": elapsed, "total_s": res.total_s, "queue_s": res.queue_s,
                "vision_s": res.vision_s, "prefill_s": res.prefill_s, "decode_s": res.decode_s,
                "prompt_tokens": res.prompt_tokens, "tokens_generated": res.tokens_generated,
                "stop_reason": res.stop_reason}

    try:
        rows = run_pairs(describe, pipe.model.llm, args.history, args.repeats)
    finally:
        worker.stop(timeout=3600)
    layers = pipe.config.llm.num_hidden_layers
    return rows, {"model": f"random {args.preset} shape, LLM {layers} layers", "llm_layers": layers}


def fill_buffer(buf, frames: int, k: int, hidden: int) -> None:
    """`frames` frames of object 0 whose tokens are already there (random [K, H]): the state a
    buffer is in after a camera and a tracker ran for a while."""
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.ones((8, 8), np.uint8)
    for i in range(frames):
        stamp = NS + i * FRAME_PERIOD_NS
        buf.add_frame(stamp, image)
        buf.add_region(0, stamp, mask)
    while True:
        plan = buf.pending_work(max_globals=frames, max_tokens=frames)
        if plan.empty:
            break
        for g in plan.global_jobs:
            buf.set_global(g.stamp_ns, torch.zeros(1), epoch=g.epoch)
        for t in plan.token_jobs:
            buf.set_tokens(t.object_id, t.stamp_ns, torch.randn(k, hidden) * 0.02, epoch=t.epoch)
    if buf.stats().token_sets != frames:
        raise RuntimeError(f"buffer holds {buf.stats().token_sets} token sets, not {frames}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--via", choices=["node", "worker"], default="node")
    p.add_argument("--model-dir", default=None, help="node: checkpoint (default models/shapes, "
                   "else a random one of its shape)")
    p.add_argument("--preset", default="2b", choices=["tiny", "small", "2b", "7b"],
                   help="worker: random weights of this shape")
    p.add_argument("--llm-layers", type=int, default=None, help="worker: LLM depth (2B: 28)")
    p.add_argument("--history", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--fill-rate-hz", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the node")
    p.add_argument("--quick", action="store_true", help="tiny setting (the tests)")
    p.add_argument("--log-dir", default=str(RESULTS / "logs"))
    p.add_argument("--json", default=None, help="default bench/results/history_<via>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.history, args.repeats, args.new_tokens = [1, 4], 2, 4
        args.width, args.height, args.fill_rate_hz = 160, 120, 20.0
        if args.via == "worker":
            args.preset = "tiny"
    load_before = load_avg()
    rows, info = via_node(args) if args.via == "node" else via_worker(args)
    headers = ["history frames", "prompt tokens", "describe ms", "server total ms",
               "vision ms", "bare LLM ms", "ratio", "paired ratio", "ratio of minima", "target"]
    print(f"\n{info['model']} via {args.via}, {args.new_tokens} new tokens max, "
          f"{args.repeats} repeats, load {load_before:.1f} -> {load_avg():.1f}")
    print(table(headers, [[r["history_frames"], r["prompt_tokens"], r["describe_s"].fmt(3, 1e3),
                           r["server_total_s"].fmt(3, 1e3), f"{r['vision_s'].max * 1e3:.2f}",
                           r["bare_s"].fmt(3, 1e3), f"{r['ratio']:.3f}",
                           r["ratio_paired"].fmt(3), f"{r['ratio_min']:.3f}", "<= 1.15"]
                          for r in rows]))
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target <= 1.15: {'met' if worst <= 1.15 else 'NOT met'})")
    save_json(args.json or result_path(f"history_{args.via}"), {
        "bench": "history", "via": args.via, "quick": args.quick, "repeats": args.repeats,
        "new_tokens": args.new_tokens, "threads": args.threads, "load_avg_before": load_before,
        **info,
        "target_ratio": 1.15, "worst_ratio": worst, "median_ratio": statistics.median(
            r["ratio"] for r in rows), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
