"""onnxruntime vs PyTorch on CPU, per stage, through the same StageBackend calls the node uses.

    python -m bench.bench_backends [CKPT_DIR] [--engine-dir ENGINE_DIR] [--repeats 20] [--threads 1]

Stages (one 640x480 frame with one 120x90 object, as bench_model): the per-frame global encode
(336² -> 576 patches), the per-object crop + local-224 encodes, the object tokenizer (SAOT +
OCI + MLP), the LLM prefill of the image prompt and one decode step after it. Both backends get
the same thread count (default 1: on the shared 2-core machine a 2-thread pool stalls whenever a
thread is preempted). The engine directory is exported first if it does not exist. CKPT_DIR
defaults to the node's model, as in the other benches (models/shapes, else a random checkpoint
of its shape). Its smoke test is in tests/test_export.py, which reuses that file's export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.bench_model import scene
from bench.common import load_avg, save_json, time_it
from bench.models import resolve_model_dir
from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.model.preprocess import global_image, patchify, prepare_regions
from pixelrefer_ros.runtime.ort_backend import OrtBackend
from pixelrefer_ros.runtime.stages import CropFeatures, StageBackend, TorchBackend

REPO = Path(__file__).resolve().parents[1]


def default_checkpoint(quick: bool = False) -> Path:
    return resolve_model_dir(None, quick)[0]


def stage_inputs(pipeline: RegionPipeline) -> dict:
    """Real stage inputs for the bench frame, computed once with the torch backend."""
    cfg = pipeline.config.preprocess
    image, mask = scene()
    region = prepare_regions([image], [mask], [0], cfg)[0]
    pv_g, grid_g = patchify(global_image(image, cfg), 1, cfg)
    pv_c, grid_c = patchify(region.crop, 1, cfg)
    pv_l, grid_l = patchify(region.local, 1, cfg)
    with torch.inference_mode():
        crop_feats = pipeline.encode_images([region.crop])[0]
        local = pipeline.encode_images([region.local])[0].flatten(0, 1)
        glob = pipeline.global_features(image)
        tokens = pipeline.object_tokens(image, mask, glob)
        text = pipeline.build_prompt(prompts.DEFAULT_PROMPT_IMAGE, 1)
        ids = torch.tensor(pipeline.tokenizer.encode(text))
        embeds = prompts.splice_regions(pipeline.backend.embed(ids), ids,
                                        pipeline.config.region_token_id, tokens)
    return {"global": (torch.from_numpy(pv_g), [grid_g]),
            "crop": (torch.from_numpy(pv_c), [grid_c]),
            "local": (torch.from_numpy(pv_l), [grid_l]),
            "object": ([CropFeatures(crop_feats, torch.from_numpy(region.mask_grid),
                                     region.box, region.orig_hw)], local[None], glob[None]),
            "embeds": embeds[None], "patches": {"global": grid_g, "crop": grid_c,
                                                "local": grid_l}}


def bench_backend(backend: StageBackend, x: dict, repeats: int) -> dict:
    t = x["embeds"].shape[1]
    with torch.inference_mode():
        _, state = backend.prefill(x["embeds"], t + 8)
        token = torch.tensor([[11]])
        return {
            "global_encode": time_it(lambda: backend.encode(*x["global"]), repeats),
            "object_encode": time_it(lambda: (backend.encode(*x["crop"]),
                                              backend.encode(*x["local"])), repeats),
            "object_tokens": time_it(lambda: backend.object_tokens(*x["object"]), repeats),
            "prefill": time_it(lambda: backend.prefill(x["embeds"], t + 8), repeats),
            "decode_step": time_it(lambda: backend.decode(token, state), repeats),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, nargs="?", default=None)
    p.add_argument("--engine-dir", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny checkpoint, 2 repeats")
    p.add_argument("--json", default=None, help="default bench/results/backends_<model>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 2
    load_before = load_avg()
    ckpt = args.checkpoint or default_checkpoint(args.quick)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(ckpt, "float32")
    # the hash in the name: a retrained models/shapes gets a fresh export, not a refusal
    engine_dir = args.engine_dir or (REPO / "bench" / "results" /
                                     f"engines_{ckpt.name}_{loaded.checkpoint_hash[:8]}")
    if not (engine_dir / "manifest.json").is_file():
        from export.cli import main as export_main

        export_main([str(ckpt), "--out", str(engine_dir)])
    torch_backend = TorchBackend(loaded.model)
    ort_backend = OrtBackend(engine_dir, loaded.checkpoint_hash, threads=args.threads)
    x = stage_inputs(RegionPipeline(loaded, torch_backend))
    results = {"torch": bench_backend(torch_backend, x, args.repeats),
               "onnxruntime": bench_backend(ort_backend, x, args.repeats)}
    print(f"{ckpt.name}: {args.threads} threads, {args.repeats} repeats, prompt "
          f"{x['embeds'].shape[1]} tokens, patches {x['patches']}")
    print(f"{'stage':14s} {'torch':>40s} {'onnxruntime':>40s}  torch/ort")
    summary = {}
    for stage, t_torch in results["torch"].items():
        t_ort = results["onnxruntime"][stage]
        ratio = t_torch.median_s / t_ort.median_s
        print(f"{stage:14s} {t_torch!s:>40s} {t_ort!s:>40s}  {ratio:6.2f}x")
        summary[stage] = {name: vars(results[name][stage]) for name in results}
        summary[stage]["torch_over_ort"] = round(ratio, 3)
    out = args.json or str(REPO / "bench" / "results" / f"backends_{ckpt.name}.json")
    print(f"load {load_before:.1f} -> {load_avg():.1f}")
    save_json(out, {"bench": "backends", "checkpoint": str(ckpt), "engine_dir": str(engine_dir),
                    "load_avg_before": load_before,
                    "threads": args.threads, "repeats": args.repeats,
                    "prompt_tokens": int(x["embeds"].shape[1]),
                    "patches": {k: list(v) for k, v in x["patches"].items()},
                    "onnxruntime_providers": ort_backend.providers,
                    "results": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

