"""Parity of an engine directory with the PyTorch reference.

Three checks, all reported in the manifest and by `pixelrefer-export --verify`:
1. every graph on random inputs (including the awkward cases: one valid cell, none, a crop
   resized to its mask grid, a one-token prompt), against the model's own reference methods;
2. every graph on real inputs: the stage calls the torch pipeline makes on real scenes are
   recorded and replayed through the graph backend; decode is checked step by step along the
   real greedy continuation, each side feeding its own KV cache;
3. the full pipeline's greedy text, torch vs the graph backend, on the same scenes.
`max_abs` = max |graph - torch|; `rel` = max_abs / max |torch| (a per-output scale, so
near-zero elements do not blow it up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.loader import LoadedModel
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.runtime.stages import CropFeatures, KVState, StageBackend, TorchBackend


@dataclass
class Scene:
    """One describe() call: images RGB uint8, masks 0/1, mask i on images[mask_ids[i]]."""

    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray]
    mask_ids: list[int]
    question: str
    modal: str = "image"
    timestamps: list[float] | None = None
    mask_ids_raw: list[list[int]] | None = None


class Recorder(TorchBackend):
    """TorchBackend that keeps the inputs of every stage call (the "real" graph inputs)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls: dict[str, list[tuple]] = {"vision": [], "objects": [], "prefill": []}

    def encode(self, pixel_values, grids):
        out = super().encode(pixel_values, grids)
        self.calls["vision"].append((pixel_values.clone(), list(grids), out))
        return out

    def object_tokens(self, crops, local, global_):
        out = super().object_tokens(crops, local, global_)
        for i, (crop, tokens) in enumerate(zip(crops, out.split(len(out) // len(crops)),
                                              strict=True)):
            self.calls["objects"].append((crop, local[i].clone(), global_[i].clone(), tokens))
        return out

    def prefill(self, embeds, max_seq_len):
        self.calls["prefill"].append((embeds.clone(), max_seq_len))
        return super().prefill(embeds, max_seq_len)


def diff(graph: Tensor | np.ndarray, ref: Tensor) -> dict[str, float]:
    graph = torch.as_tensor(np.asarray(graph)) if not isinstance(graph, Tensor) else graph
    ref = ref.detach().float().cpu()
    err = float((graph.detach().float().cpu() - ref).abs().max())
    scale = float(ref.abs().max())
    return {"max_abs": err, "rel": err / scale if scale > 0 else err}


def _merge(acc: dict[str, dict[str, float]], name: str, d: dict[str, float]) -> None:
    old = acc.setdefault(name, {"max_abs": 0.0, "rel": 0.0})
    for k in old:
        old[k] = max(old[k], d[k])


# ----------------------------------------------------------------------------- per graph

def _kv_numpy(state: KVState) -> tuple[np.ndarray, np.ndarray]:
    k, v = state.past_k, state.past_v
    return (k.numpy() if hasattr(k, "numpy") else np.asarray(k),
            v.numpy() if hasattr(v, "numpy") else np.asarray(v))


@torch.inference_mode()
def check_vision(backend: StageBackend, model, calls: Sequence[tuple]) -> dict:
    out: dict = {}
    for pixel_values, grids, *known in calls:  # recorded calls carry the torch output
        ref = known[0] if known else model.vision(pixel_values, grids)
        _merge(out, "features", diff(backend.encode(pixel_values, grids), ref))
    return out


@torch.inference_mode()
def check_objects(backend: StageBackend, model, calls: Sequence[tuple]) -> dict:
    ref_backend, out = TorchBackend(model), {}
    for crop, local, global_, *known in calls:
        ref = known[0] if known else ref_backend.object_tokens([crop], local[None], global_[None])
        _merge(out, "tokens", diff(backend.object_tokens([crop], local[None], global_[None]),
                                   ref))
    return out


@torch.inference_mode()
def check_llm(backend: StageBackend, model, prompts_: Sequence[Tensor], steps: int) -> dict:
    """Prefill each prompt [1, T, H], then `steps` greedy decode steps, each side on its own
    KV cache; compares logits and the caches at every step."""
    llm, out = model.llm, {}
    for embeds in prompts_:
        past_k, past_v = llm.empty_past()
        ref_logits, ref_k, ref_v = llm.forward_with_past(embeds, past_k, past_v, last_only=True)
        logits, state = backend.prefill(embeds, embeds.shape[1] + steps + 1)
        k, v = _kv_numpy(state)
        for name, got, ref in (("logits", logits, ref_logits[:, -1]), ("present_k", k, ref_k),
                               ("present_v", v, ref_v)):
            _merge(out.setdefault("prefill", {}), name, diff(got, ref))
        token = torch.argmax(ref_logits[:, -1], dim=-1).view(1, 1)
        for _ in range(steps):
            ref_logits, ref_k, ref_v = llm.forward_with_past(llm.embed(token), ref_k, ref_v,
                                                             last_only=True)
            logits, state = backend.decode(token, state)
            k, v = _kv_numpy(state)
            for name, got, ref in (("logits", logits, ref_logits[:, -1]),
                                   ("present_k", k, ref_k), ("present_v", v, ref_v)):
                _merge(out.setdefault("decode", {}), name, diff(got, ref))
            token = torch.argmax(ref_logits[:, -1], dim=-1).view(1, 1)
    return out


def random_calls(model, seed: int = 0) -> dict[str, list]:
    """Random graph inputs at a few sizes, with the edge cases named in the module doc (and
    G = 1: an empty mask's 1x1 grid under a 4x4 crop)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    c, h, k = cfg.vision.hidden_size, cfg.llm.hidden_size, cfg.objects.tokens_per_object
    patch = cfg.vision.num_channels * cfg.vision.patch_size**2

    def pv(grids):  # pixel values like the processor's: [-1, 1]
        n = sum(a * b for a, b in grids)
        return (torch.rand(n, patch, generator=g) * 2 - 1, grids)

    def crop(hc, wc, gh, gw, keep):
        grid = (torch.rand(gh, gw, generator=g) < keep).float()
        feats = torch.randn(hc, wc, c, generator=g)
        box = (10, 20, 10 + 14 * gh, 20 + 14 * gw)
        return (CropFeatures(feats, grid, box, (480, 640)), torch.randn(256, c, generator=g),
                torch.randn(576, c, generator=g))

    return {
        "vision": [pv([(24, 24)]), pv([(5, 7), (16, 16), (4, 4)])],
        "objects": [crop(12, 10, 12, 10, 0.7), crop(6, 6, 6, 6, 0.5), crop(5, 5, 5, 5, 0.0),
                    crop(9, 9, 9, 9, 1.0 / 81 + 1e-3), crop(6, 7, 12, 14, 0.6),
                    crop(4, 4, 1, 1, 0.0), crop(4, 4, 1, 1, 1.0)],  # G = 1: empty-mask shape
        "prefill": [torch.randn(1, t, h, generator=g) * 0.5 for t in (1, 2 * k + 5)],
    }


# ----------------------------------------------------------------------------- pipeline

def run_scenes(pipeline: RegionPipeline, scenes: Sequence[Scene], max_new_tokens: int
               ) -> dict[str, Any]:
    out = {}
    for s in scenes:
        a = pipeline.describe(s.images, s.masks, s.mask_ids, s.question, s.modal, s.timestamps,
                              s.mask_ids_raw, max_new_tokens=max_new_tokens)
        out[s.name] = {"token_ids": a.token_ids, "text": a.text}
    return out


def verify(loaded: LoadedModel, backend: StageBackend, scenes: Sequence[Scene],
           max_new_tokens: int = 16, decode_steps: int = 4) -> dict[str, Any]:
    """The full report (JSON-able). `passed` = identical greedy text on every scene."""
    model = loaded.model
    report: dict[str, Any] = {"backend": backend.name, "random": {}, "real": {}, "text": {}}
    rnd = random_calls(model)
    report["random"]["vision"] = check_vision(backend, model, rnd["vision"])
    report["random"]["objects"] = check_objects(backend, model, rnd["objects"])
    report["random"].update(check_llm(backend, model, rnd["prefill"], decode_steps))

    recorder = Recorder(model)
    reference = run_scenes(RegionPipeline(loaded, recorder), scenes, max_new_tokens)
    report["real"]["vision"] = check_vision(backend, model, recorder.calls["vision"])
    report["real"]["objects"] = check_objects(backend, model, recorder.calls["objects"])
    embeds = [e for e, _ in recorder.calls["prefill"]]
    report["real"].update(check_llm(backend, model, embeds, decode_steps))

    candidate = run_scenes(RegionPipeline(loaded, backend), scenes, max_new_tokens)
    for name, ref in reference.items():
        got = candidate[name]
        report["text"][name] = {"identical": got["token_ids"] == ref["token_ids"],
                                "torch": ref["text"], backend.name: got["text"],
                                "tokens": len(ref["token_ids"])}
    report["passed"] = all(t["identical"] for t in report["text"].values())
    return report


def synthetic_scenes(num_image: int = 3, frames: int = 4) -> list[Scene]:
    """Shapes-world scenes (pixelrefer_ros.synthetic): image questions about every object of a
    scene, and one object described over `frames` frames (video mode)."""
    from pixelrefer_ros.synthetic.world import generate_scene

    scenes = []
    for seed in range(num_image):
        sc = generate_scene(seed)
        n = sc.num_objects
        question = prompts.DEFAULT_PROMPT_IMAGE if n == 1 else prompts.relation_prompt(n)
        scenes.append(Scene(f"shapes_image_{seed}", [sc.frames[0]], list(sc.masks[0]), [0] * n,
                            question))
    sc = generate_scene(100)
    t = min(frames, sc.num_frames)
    scenes.append(Scene("shapes_video_100", list(sc.frames[:t]),
                        [sc.masks[i, 0] for i in range(t)], list(range(t)),
                        prompts.DEFAULT_PROMPT_VIDEO, "video",
                        [float(x) for x in sc.timestamps[:t]], [list(range(t))]))
    return scenes


def format_report(report: dict[str, Any]) -> str:
    lines = [f"parity of {report['backend']} vs torch (max_abs / rel per output):"]
    for kind in ("random", "real"):
        for graph, outs in report[kind].items():
            cells = ", ".join(f"{o} {d['max_abs']:.2e} / {d['rel']:.2e}" for o, d in outs.items())
            lines.append(f"  {kind:6s} {graph:8s} {cells}")
    for name, t in report["text"].items():
        mark = "identical" if t["identical"] else "DIFFERENT"
        lines.append(f"  text   {name}: {mark} ({t['tokens']} tokens) {t['torch']!r}")
    lines.append("PASSED" if report["passed"] else "FAILED: greedy text differs")
    return "\n".join(lines)
