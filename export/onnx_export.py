"""Export the four stage graphs (export/graphs.py) of a loaded checkpoint to ONNX.

Exporter choice, measured with torch 2.13 on the official tiny checkpoint (README "Export"): the
dynamo exporter (the default) keeps every dynamic axis symbolic and stores the tied embedding
once; the legacy TorchScript exporter is ~7x faster but bakes the objects graph's attention
reshapes to the example shapes (onnxruntime then fails on another local/global size) and stores
the tied embedding twice in the decode graph. So: dynamo, opset 18 (the TensorRT 10 ONNX parser
reads it; opset 23 would emit the ONNX Attention op), weights as external data (the 2B LLM is
over the 2 GB protobuf limit).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.graphs import GRAPH_NAMES, build_graph, graph_specs
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.runtime.ort_backend import EMBEDDINGS_FILE

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportLimits:
    """Node-side limits that bound the dynamic axes (TensorRT profiles; host checks)."""

    max_seq_len: int = 4096  # prompt + generated tokens per request (KV cache length)
    max_cells: int = 16384  # mask-grid cells of one object (2x the 8192-patch budget)
    opt_prompt: int = 128  # a few objects' region blocks + the question
    opt_cells: int = 256


def axis_ranges(model: PixelReferLite, limits: ExportLimits) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every symbolic axis, from the config and the node limits.

    Vision: one processor call holds at most mm_max_length patches, an image at least
    min_pixels (16 patches). Local/global contexts are 224²/336² squashes, shrunk only when many
    masks share a call. The LLM axes are bounded by max_seq_len.
    """
    pre = model.config.preprocess
    area = pre.patch_size**2
    min_patches = pre.min_pixels // area
    local, glob = (pre.local_size**2) // area, (pre.global_size**2) // area
    ranges = {
        "patches": (min_patches, glob, pre.mm_max_length),
        "cells": (1, limits.opt_cells, limits.max_cells),
        "local_patches": (min_patches, local, local),
        "global_patches": (min_patches, glob, glob),
        "prompt": (1, limits.opt_prompt, limits.max_seq_len),
        "past": (1, limits.opt_prompt, limits.max_seq_len - 1),
    }
    return {k: (lo, min(max(opt, lo), hi), hi) for k, (lo, opt, hi) in ranges.items()}


def example_inputs(name: str, model: PixelReferLite) -> tuple[torch.Tensor, ...]:
    """Small random inputs for tracing; sizes avoid 0/1, which torch.export would specialise."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    c, h = cfg.vision.hidden_size, cfg.llm.hidden_size
    if name == "vision":
        grids = [(5, 7), (4, 4)]
        rows = [(r, col) for gh, gw in grids for r in range(gh) for col in range(gw)]
        segs = [i for i, (gh, gw) in enumerate(grids) for _ in range(gh * gw)]
        patch = cfg.vision.num_channels * cfg.vision.patch_size**2
        return (torch.randn(len(rows), patch, generator=g),
                torch.tensor(rows, dtype=torch.int32), torch.tensor(segs, dtype=torch.int32))
    if name == "objects":
        return (torch.randn(50, c, generator=g), torch.rand(50, 2, generator=g),
                torch.rand(50, generator=g) > 0.3, torch.randn(20, c, generator=g),
                torch.randn(36, c, generator=g))
    if name == "prefill":
        return (torch.randn(1, 7, h, generator=g),)
    kv = (cfg.llm.num_hidden_layers, 1, cfg.llm.num_key_value_heads, 9, cfg.llm.head_dim)
    return (torch.tensor([[5]], dtype=torch.int32), torch.randn(kv, generator=g),
            torch.randn(kv, generator=g))


def export_graph(name: str, model: PixelReferLite, path: Path,
                 ranges: dict[str, tuple[int, int, int]], opset: int = DEFAULT_OPSET) -> float:
    """Export one graph to `path` (+ `path`.data); returns the seconds it took."""
    spec = graph_specs(model)[name]
    module = build_graph(name, model)
    # torch.export specialises sizes 0/1, so symbolic dims start at 2; the ONNX graph itself
    # has no bound and runs size 1 (verify covers a 1-token prompt, a 1-token past, G = 1)
    dims = {axis: torch.export.Dim(axis, min=max(lo, 2), max=hi)
            for axis, (lo, _, hi) in ranges.items()}
    params = list(inspect.signature(module.forward).parameters)  # python names ("global_")
    dynamic = {p: ({i: dims[s] for i, s in enumerate(shape) if isinstance(s, str)} or None)
               for p, shape in zip(params, spec.inputs.values(), strict=True)}
    start = time.perf_counter()
    with _quiet_exporter():
        torch.onnx.export(module, example_inputs(name, model), str(path), dynamo=True,
                          opset_version=opset, input_names=list(spec.inputs),
                          output_names=list(spec.outputs), dynamic_shapes=dynamic,
                          external_data=True, optimize=True, verbose=False)
    return time.perf_counter() - start


def export_all(model: PixelReferLite, out_dir: Path, limits: ExportLimits,
               opset: int = DEFAULT_OPSET, log=print) -> dict[str, dict]:
    """All graphs plus the embedding table the host splices prompts with. Returns per-graph
    file, export seconds and bytes on disk (graph + external data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges = axis_ranges(model, limits)
    info: dict[str, dict] = {}
    for name in GRAPH_NAMES:
        path = out_dir / f"{name}.onnx"
        for old in (path, path.with_name(path.name + ".data")):
            old.unlink(missing_ok=True)
        seconds = export_graph(name, model, path, ranges, opset)
        size = sum(p.stat().st_size for p in out_dir.glob(f"{name}.onnx*"))
        info[name] = {"file": path.name, "export_s": round(seconds, 2), "bytes": size}
        log(f"exported {name:8s} in {seconds:5.1f} s ({size / 2**20:.1f} MiB)")
    table = model.llm.embed_tokens.weight.detach().float().cpu().numpy()  # [V, H]
    np.save(out_dir / EMBEDDINGS_FILE, table)
    return info


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's INFO/WARNING chatter (torchvision op registration, constant
    folding notes) so the CLI output stays readable; errors still raise."""
    names = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
