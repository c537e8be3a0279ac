"""Object-only (Lite) vs vision-object (full PixelRefer) prompts: LLM input tokens, prefill FLOPs
(without and with the vision encoder), KV-cache bytes and measured prefill latency.

    python -m bench.bench_tokens [--shape 2b] [--measure-layers 2] [--repeats 3]

Scenarios (one object, 640x480 unless said): a single image; a 32-frame clip with the object
masked on every frame (what the node's tracker gives it); the same clip masked on one frame (the
paper's video protocol); and the paper's anchor setting (HC-STVG-like: 20 frames of 640x360, a
mask on one frame). Full PixelRefer's token path is in vision_object.py; its video tokens are
counted after its frame-difference pruner for a noisy camera (sensor noise sigma 2, what a real
camera gives) and for a noiseless static one (the pruner's best case).

FLOPs are counted with torch.utils.flop_counter on the real modules built on the meta device
(no memory, no time): LLM prefill of T tokens (attention over all T keys, LM head on the last
token), OCI + MLP per (object, frame) for Lite, the mlp2x_gelu projector per token for full, and
the ViT over every image each path encodes (Lite: the 336² frame, crop and 224² local crop per
masked frame; full: every frame, plus the crop per masked frame). k-means and host preprocessing
are not counted. Prefill latency is measured on the node's model (models/shapes, else a random
one of its shape) and on random 2B-width LLMs with `--measure-layers` of 28 layers, scaled by
28/L (per-layer cost is identical; the scaled figure is an estimate, marked so).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Spread, load_avg, result_path, save_json, table
from bench.models import bench_tokenizer, named_config, random_model, resolve_model_dir
from bench.scenes import make_clip
from bench.vision_object import (
    image_tokens,
    object_tokens_full,
    projector_flops,
    video_tokens,
)
from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.config import PixelReferConfig
from pixelrefer_ros.model.llm import Qwen2
from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.object_tokenizer import ObjectTokenizer
from pixelrefer_ros.model.preprocess import prepare_region
from pixelrefer_ros.model.vision import VisionEncoder

PAPER = {"setting": "A100, HC-STVG, 20 frames, batch 1, PixelRefer-2B vs Lite-2B",
         "tflops_llm_oci": (11.15, 0.11), "peak_memory_gb": (24.6, 5.2),
         "s_per_item": (0.82, 0.68)}
FPS = 30.0  # node timestamps: frames of a 30 Hz camera


@dataclass(frozen=True)
class Scenario:
    name: str
    frames: int
    masked: tuple[int, ...]  # frame indices that carry the object's mask
    width: int = 640
    height: int = 480
    note: str = ""


SCENARIOS = [
    Scenario("image", 1, (0,), note="one image, one object"),
    Scenario("clip32_tracked", 32, tuple(range(32)),
             note="32 frames, object masked on all 32 (the node with a tracker)"),
    Scenario("clip32_one_mask", 32, (31,), note="32 frames, mask on the last frame only"),
    Scenario("paper_hcstvg20", 20, (0,), 640, 360,
             note="paper anchor setting: 20 frames 640x360, mask on one frame"),
]
QUICK = [Scenario("image", 1, (0,), 160, 120), Scenario("clip4_tracked", 4, (0, 1, 2, 3), 160, 120)]


# ------------------------------------------------------------------------------ token counts

def count_tokens(sc: Scenario, cfg: PixelReferConfig) -> dict:
    """LLM input tokens of both paths for one scenario, and the ViT grids each path encodes."""
    pcfg, tok = cfg.preprocess, bench_tokenizer()
    k = cfg.objects.tokens_per_object
    clip = make_clip(sc.frames, 1, sc.height, sc.width, seed=1)
    noisy = make_clip(sc.frames, 1, sc.height, sc.width, seed=1, sensor_noise=2.0)
    n_m = len(sc.masked)
    if sc.frames == 1:
        lite_text = prompts.image_prompt(prompts.DEFAULT_PROMPT_IMAGE, 1, k)
        stamp_tokens = 0
        full_visual = {"noisy": image_tokens(clip.frames[0], pcfg)}
        full_visual["static"] = full_visual["noisy"]
    else:
        lite_text = prompts.video_prompt(prompts.DEFAULT_PROMPT_VIDEO,
                                         [[i / FPS for i in sc.masked]], k)
        stamp_tokens = len(tok.encode("Time 0.0:"))  # the per-frame "Time t:" text
        full_visual = {"noisy": video_tokens(noisy.frames, pcfg),
                       "static": video_tokens(clip.frames, pcfg),
                       "unpruned": video_tokens(clip.frames, pcfg, prune=False)}
    lite_t = len(tok.encode(lite_text))
    # full: the same question and per-frame time stamps, visual tokens for every frame, and
    # min(32, mask cells) object tokens per masked frame instead of Lite's 32
    obj_full, crop_full = zip(*(object_tokens_full(clip.frames[i], clip.masks[i][0], pcfg)
                                for i in sc.masked), strict=True)
    text_full = lite_t - k * n_m - stamp_tokens * n_m + stamp_tokens * sc.frames
    full_t = {name: text_full + sum(obj_full) + v.total for name, v in full_visual.items()}
    lite_crops = [prepare_region(clip.frames[i], clip.masks[i][0], pcfg) for i in sc.masked]
    lite_grids = []
    for r in lite_crops:  # per masked frame: the 336² frame, the crop, the 224² local crop
        lite_grids += [(24, 24), (r.crop.shape[0] // 14, r.crop.shape[1] // 14), (16, 16)]
    return {
        "scenario": sc.name, "note": sc.note, "frames": sc.frames,
        "masked_frames": list(sc.masked), "size": [sc.width, sc.height],
        "lite_tokens": lite_t, "lite_object_tokens": k * n_m,
        "full_tokens": full_t, "full_visual_tokens": {n: v.total for n, v in full_visual.items()},
        "full_object_tokens": sum(obj_full),
        "full_visual_per_frame": {n: v.kept for n, v in full_visual.items()},
        "lite_vit_grids": lite_grids,
        "full_vit_grids": full_visual["static"].grids + list(crop_full),
    }


# ------------------------------------------------------------------------------------- FLOPs

class FlopCounter:
    """FLOPs of our modules for given shapes, counted on the meta device (nothing runs)."""

    def __init__(self, cfg: PixelReferConfig) -> None:
        self.cfg = cfg
        with torch.device("meta"):
            self.llm = Qwen2(replace(cfg.llm, max_position_embeddings=1 << 20))
            self.vision = VisionEncoder(cfg.vision)
            self.objects = ObjectTokenizer(cfg.objects)

    @staticmethod
    def _count(fn) -> int:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn()
        return int(fc.get_total_flops())

    def prefill(self, t: int) -> int:
        self.llm.setup_caches(1, t, dtype=torch.float32, device="meta")
        x = torch.empty(1, t, self.cfg.llm.hidden_size, device="meta")
        return self._count(lambda: self.llm(x, torch.arange(t, device="meta"), last_only=True))

    def vit(self, grids: list[tuple[int, int]]) -> int:
        p = sum(gh * gw for gh, gw in grids)
        pv = torch.empty(p, 3 * 14 * 14, device="meta")
        return self._count(lambda: self.vision(pv, grids))

    def oci(self) -> int:
        """OCI (local + global cross-attention) and the feature MLP for one (object, frame)."""
        c, k = self.cfg.objects.vision_width, self.cfg.objects.tokens_per_object
        q = torch.empty(1, k, c, device="meta")
        local, glob = torch.empty(1, 256, c, device="meta"), torch.empty(1, 576, c, device="meta")
        return self._count(lambda: self.objects.project(self.objects.infuse(q, local, glob)))


def kv_bytes(cfg: PixelReferConfig, t: int, bytes_per: int = 2) -> int:
    """Static KV cache of T tokens: K and V, every layer, [H_kv, T, D] each (bf16: 2 bytes)."""
    llm = cfg.llm
    return 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * t * bytes_per


# ---------------------------------------------------------------------------------- latency

def time_prefills(llm: Qwen2, lengths: list[int], repeats: int,
                  warmup: bool = True) -> dict[int, Spread]:
    """Prefill of T random embeddings through the static cache (as TorchBackend.prefill), for
    every T in `lengths`, interleaved round by round: on a shared machine the load drifts, and
    interleaving lets a drift hit the Lite and the full prompt alike."""
    xs = {t: torch.randn(1, t, llm.cfg.hidden_size) * 0.02 for t in lengths}
    samples: dict[int, list[float]] = {t: [] for t in lengths}
    with torch.inference_mode():
        for i in range(repeats + warmup):
            for t, x in xs.items():
                t0 = time.perf_counter()
                llm.setup_caches(1, t + 1)
                llm(x, torch.arange(t), last_only=True)
                if i >= warmup:
                    samples[t].append(time.perf_counter() - t0)
    return {t: Spread.of(v) for t, v in samples.items()}


def unbounded(llm: Qwen2) -> Qwen2:
    """Lift max_position_embeddings for timing only: a small model trained on short prompts still
    has the cost of a long one (RoPE is computed per call, nothing else depends on it)."""
    llm.cfg = replace(llm.cfg, max_position_embeddings=1 << 20)
    return llm


def random_llm(cfg: PixelReferConfig, layers: int) -> Qwen2:
    return unbounded(random_model(replace(cfg, llm=replace(cfg.llm, num_hidden_layers=layers)),
                                  torch.float32).llm)


# -------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="2b", choices=["tiny", "small", "2b", "7b"],
                   help="model shape for FLOPs and KV bytes")
    p.add_argument("--model-dir", default=None, help="measured model (default models/shapes, "
                   "else a random one of its shape)")
    p.add_argument("--measure-layers", type=int, default=2,
                   help="2B-width LLM layers to time (0: skip), scaled to the full depth")
    p.add_argument("--repeats", type=int, default=5, help="node-model prefill repeats")
    p.add_argument("--wide-repeats", type=int, default=2,
                   help="2B-width prefill repeats (no warm-up: a run takes up to minutes here)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenarios = SCENARIOS
    if args.quick:
        scenarios, args.shape, args.measure_layers, args.repeats = QUICK, "tiny", 0, 1
    load_before = load_avg()
    cfg = named_config(args.shape)
    counter = FlopCounter(cfg)
    oci = counter.oci()
    model_dir, what = resolve_model_dir(args.model_dir, args.quick)
    measured = {"node model": unbounded(load_checkpoint(model_dir, "float32").model.llm)}
    scale = {"node model": 1.0}
    if args.measure_layers:
        name = f"{args.shape} width, {args.measure_layers} layers x{cfg.llm.num_hidden_layers}"
        measured[name] = random_llm(cfg, args.measure_layers)
        scale[name] = cfg.llm.num_hidden_layers / args.measure_layers

    rows = []
    for sc in scenarios:
        r = count_tokens(sc, cfg)
        n_m = len(sc.masked)
        r["flops"] = {"lite_llm_oci": counter.prefill(r["lite_tokens"]) + oci * n_m}
        r["flops"]["lite_vit"] = counter.vit(r["lite_vit_grids"])
        r["flops"]["full_vit"] = counter.vit(r["full_vit_grids"])
        for name, t in r["full_tokens"].items():
            r["flops"][f"full_llm_proj_{name}"] = counter.prefill(t) + projector_flops(
                cfg, r["full_visual_tokens"][name] + r["full_object_tokens"])
        r["kv_bytes_bf16"] = {"lite": kv_bytes(cfg, r["lite_tokens"]),
                              **{f"full_{n}": kv_bytes(cfg, t)
                                 for n, t in r["full_tokens"].items()}}
        r["prefill_s"] = {}
        for mname, llm in measured.items():
            lens = {"lite": r["lite_tokens"],
                    **{f"full_{n}": t for n, t in r["full_tokens"].items()}}
            wide = scale[mname] != 1.0
            done = time_prefills(llm, sorted(set(lens.values())),
                                 args.wide_repeats if wide else args.repeats, warmup=not wide)
            timed = {key: Spread(done[t].median * scale[mname], done[t].min * scale[mname],
                                 done[t].max * scale[mname], done[t].n)
                     for key, t in lens.items()}
            r["prefill_s"][mname] = {"estimated": scale[mname] != 1.0, **timed}
            print(f"{sc.name}: {mname}: lite {timed['lite'].fmt(3, 1e3)} ms, full "
                  f"{timed['full_static'].fmt(3, 1e3)} ms", flush=True)
        rows.append(r)
    report(rows, args, what, load_before)
    save_json(args.json or result_path("tokens"), {
        "bench": "tokens", "quick": args.quick, "shape": args.shape, "threads": args.threads,
        "repeats": args.repeats, "wide_repeats": args.wide_repeats,
        "measured_models": {n: {"scale": scale[n]} for n in measured},
        "node_model": what, "oci_flops_per_object_frame": oci, "paper": PAPER,
        "load_avg_before": load_before, "results": rows})
    return 0


def report(rows: list[dict], args: argparse.Namespace, what: str, load_before: float) -> None:
    full_keys = ("noisy", "static")
    print(f"\nshape {args.shape}; measured: {what} and 2B-width layers; load "
          f"{load_before:.1f} -> {load_avg():.1f}; threads {args.threads}")
    print(table(["scenario", "masked frames", "Lite tokens", "full tokens (noisy cam / static)",
                 "ratio", "KV bf16 Lite", "KV bf16 full (noisy)"],
                [[r["scenario"], _frames(r["masked_frames"]), r["lite_tokens"],
                  " / ".join(str(r["full_tokens"][k]) for k in full_keys),
                  f"{r['full_tokens']['noisy'] / r['lite_tokens']:.1f}x",
                  _mib(r["kv_bytes_bf16"]["lite"]), _mib(r["kv_bytes_bf16"]["full_noisy"])]
                 for r in rows]))
    print()
    print(table(["scenario", "Lite LLM+OCI TFLOPs", "full LLM+proj TFLOPs (noisy)", "ratio",
                 "Lite +ViT", "full +ViT", "ratio +ViT"],
                [[r["scenario"], f"{r['flops']['lite_llm_oci'] / 1e12:.3g}",
                  f"{r['flops']['full_llm_proj_noisy'] / 1e12:.3g}",
                  f"{r['flops']['full_llm_proj_noisy'] / r['flops']['lite_llm_oci']:.1f}x",
                  f"{(r['flops']['lite_llm_oci'] + r['flops']['lite_vit']) / 1e12:.3g}",
                  f"{(r['flops']['full_llm_proj_noisy'] + r['flops']['full_vit']) / 1e12:.3g}",
                  f"{_with_vit_ratio(r):.1f}x"] for r in rows]))
    lite_p, full_p = PAPER["tflops_llm_oci"][1], PAPER["tflops_llm_oci"][0]
    print(f"paper anchor (LLM+OCI, no ViT): {full_p} -> {lite_p} TFLOPs = {full_p / lite_p:.0f}x")
    print()
    for mname in rows[0]["prefill_s"]:
        est = " (estimated: scaled from fewer layers)" if rows[0]["prefill_s"][mname][
            "estimated"] else ""
        print(f"measured prefill, {mname}{est}")
        print(table(["scenario", "Lite ms", "full ms (noisy cam)", "full ms (static)", "ratio"],
                    [[r["scenario"], r["prefill_s"][mname]["lite"].fmt(3, 1e3),
                      r["prefill_s"][mname]["full_noisy"].fmt(3, 1e3),
                      r["prefill_s"][mname]["full_static"].fmt(3, 1e3),
                      f"{_prefill_ratio(r['prefill_s'][mname]):.1f}x"] for r in rows]))


def _prefill_ratio(p: dict) -> float:
    return p["full_noisy"].median / p["lite"].median


def _with_vit_ratio(r: dict) -> float:
    f = r["flops"]
    return (f["full_llm_proj_noisy"] + f["full_vit"]) / (f["lite_llm_oci"] + f["lite_vit"])


def _frames(masked: list[int]) -> str:
    return f"{len(masked)} ({masked[0]}..{masked[-1]})" if len(masked) > 1 else f"1 (#{masked[0]})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


if __name__ == "__main__":
    raise SystemExit(main())
