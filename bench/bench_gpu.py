"""GPU: the released 2B shape with random weights in PyTorch CUDA bf16, stage by stage, and decode
speed against the memory-bandwidth bound. Prints 'skipped: no CUDA' where there is no GPU.

    python -m bench.bench_gpu [--preset 2b] [--repeats 10] [--new-tokens 64]

Stages as the node runs them (one 640x480 frame, one object): the per-frame global encode,
the per-(object, frame) tokenisation (crop + 224² local encode, SAOT, OCI, MLP), LLM prefill
of the Lite prompts (image; 32-frame clip with the object on every frame) and of the full
PixelRefer prompts for the same inputs (token counts from bench_tokens), and greedy decode
through the node's TorchBackend, eager and replayed as a CUDA graph (runtime/decode_graph.py).
A decode step reads every LLM weight once (the tied head reads the whole embedding matrix), so
tokens/s cannot exceed bandwidth / LLM weight bytes; the bandwidth is measured here with a
device-to-device copy (bytes read + written), next to the datasheet figure when the GPU is known.
Peak memory is torch.cuda.max_memory_allocated per stage (weights included).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench.common import Timing, load_avg, result_path, save_json, table
from bench.models import named_config, random_pipeline
from bench.scenes import make_clip
from pixelrefer_ros.runtime.stages import TorchBackend, generate

GRAPH_CACHE_TOKENS = 2048  # the node's default cuda_graph_tokens

# Datasheet memory bandwidth, GB/s (decimal), for GPUs this node is likely to meet.
DATASHEET_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
                  "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100-PCIE": 1555,
                  "L40S": 864, "L4": 300, "A10G": 600, "RTX 4090": 1008, "Orin": 205}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> Timing:
    """Median wall time with the device synchronised before and after every run."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return Timing.of(samples)


def copy_bandwidth_gbps(gib: float = 1.0, repeats: int = 10) -> float:
    """Achievable DRAM bandwidth: a device-to-device copy moves 2x its size (read + write)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), repeats)
    return 2 * gib * 2**30 / t.median_s / 1e9


def datasheet_gbps(name: str) -> float | None:
    for key, gbps in DATASHEET_GBPS.items():
        if all(part in name for part in key.split()):
            return gbps
    return None


def peak_of(fn: Callable[[], object]) -> float | None:
    """Peak allocated GiB while fn runs (weights and caches included); None off the GPU."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="2b", choices=["tiny", "small", "2b", "7b"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="tiny shape, few repeats")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu runs the same code path without a GPU, to check the script only")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.repeats, args.new_tokens = "tiny", 2, 8
    out = args.json or result_path(f"gpu_{args.preset}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA (torch.cuda.is_available() is False on this machine)")
        save_json(out, {"bench": "gpu", "skipped": "no CUDA"})
        return 0
    dev = args.device
    dtype = torch.float16 if dev == "cuda" and not torch.cuda.is_bf16_supported() \
        else torch.bfloat16
    load_before = load_avg()
    t0 = time.perf_counter()
    pipe = random_pipeline(args.preset, dtype=dtype, device=dev)
    build_s = time.perf_counter() - t0
    model = pipe.model
    llm = model.llm
    weight_bytes = {name: sum(p.numel() * p.element_size() for p in mod.parameters())
                    for name, mod in (("vision", model.vision), ("objects", model.objects),
                                      ("llm", llm))}
    clip = make_clip(1, 1, 480, 640)
    image, mask = clip.frames[0], clip.masks[0][0]

    from bench.bench_tokens import QUICK, SCENARIOS, count_tokens

    scenarios = QUICK if args.quick else [sc for sc in SCENARIOS
                                          if sc.name in ("image", "clip32_tracked")]
    counts = {sc.name: count_tokens(sc, named_config(args.preset)) for sc in scenarios}
    prompts = {f"Lite {name}": c["lite_tokens"] for name, c in counts.items()}
    prompts |= {f"full {name}": c["full_tokens"]["noisy"] for name, c in counts.items()}

    results: dict[str, dict] = {}
    with torch.inference_mode():
        feats = pipe.global_features(image)
        results["global_encode"] = {"timing": cuda_time(lambda: pipe.global_features(image),
                                                        args.repeats),
                                    "peak_gib": peak_of(lambda: pipe.global_features(image))}

        def tokenise() -> None:
            pipe.object_tokens(image, mask, feats)

        results["object_tokenisation"] = {"timing": cuda_time(tokenise, args.repeats),
                                          "peak_gib": peak_of(tokenise)}
        for name, t in prompts.items():
            x = torch.randn(1, t, llm.cfg.hidden_size, device=dev, dtype=dtype) * 0.02

            def prefill(x: torch.Tensor = x, t: int = t) -> None:
                llm.setup_caches(1, t + 1)
                llm(x, torch.arange(t, device=dev), last_only=True)

            results[f"prefill {name}"] = {"tokens": t, "timing": cuda_time(prefill, args.repeats),
                                          "peak_gib": peak_of(prefill)}
        embeds = torch.randn(prompts[f"Lite {scenarios[0].name}"], llm.cfg.hidden_size, device=dev,
                             dtype=dtype) * 0.02

        def decode_rates(backend: TorchBackend) -> list[float]:
            """tokens/s of 3 runs after a warm-up run (which captures the graph, if any)."""
            runs = [generate(backend, embeds, args.new_tokens, eos_id=-1) for _ in range(4)][1:]
            return sorted((len(r.token_ids) - 1) / r.decode_s for r in runs)

        tps = decode_rates(TorchBackend(model))
        tps_graph = decode_rates(TorchBackend(model, static_cache_tokens=GRAPH_CACHE_TOKENS)) \
            if dev == "cuda" else tps
    if dev == "cpu":
        print("--device cpu: code path checked; no GPU figures")
        save_json(out, {"bench": "gpu", "skipped": "device cpu (script check only)",
                        "results": {k: v for k, v in results.items()}})
        return 0
    bandwidth = copy_bandwidth_gbps()
    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0)
    sheet = datasheet_gbps(name)
    bound = bandwidth * 1e9 / weight_bytes["llm"]
    for key, rates in (("decode", tps), ("decode_cuda_graph", tps_graph)):
        results[key] = {"tokens_per_s": rates[1], "min": rates[0], "max": rates[-1],
                        "bound_measured_bw": bound,
                        "bound_datasheet_bw": sheet * 1e9 / weight_bytes["llm"] if sheet else None,
                        "fraction_of_bound": rates[1] / bound}
    print(f"{name}, {args.preset} random weights, {dtype}, built in {build_s:.1f} s; "
          f"weights GiB: " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in weight_bytes.items()))
    rows = [[k, str(v["timing"]).strip(), f"{v['peak_gib']:.2f}"] for k, v in results.items()
            if "timing" in v]
    print(table(["stage", "median (min, max)", "peak GiB"], rows))
    for label, rates in (("eager", tps), (f"CUDA graph ({GRAPH_CACHE_TOKENS}-slot cache)",
                                           tps_graph)):
        print(f"decode {label}: {rates[1]:.1f} tokens/s (min {rates[0]:.1f}, max {rates[-1]:.1f})"
              f"; {100 * rates[1] / bound:.0f} % of the bound")
    print(f"bound {bound:.1f} tokens/s at the measured {bandwidth:.0f} GB/s copy bandwidth"
          + (f", {sheet * 1e9 / weight_bytes['llm']:.1f} at the datasheet {sheet} GB/s"
             if sheet else ""))
    save_json(out, {"bench": "gpu", "quick": args.quick, "preset": args.preset,
                    "dtype": str(dtype), "gpu": name, "copy_bandwidth_gbps": bandwidth,
                    "datasheet_bandwidth_gbps": sheet, "weight_bytes": weight_bytes,
                    "load_avg_before": load_before, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
