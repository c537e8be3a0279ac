"""The onnxruntime backend: the exported graphs of an engine directory (pixelrefer-export).

Providers come from an explicit list (the node parameter): CPU everywhere; CUDA or TensorRT
execution providers where the installed onnxruntime build has them. The KV cache stays in
OrtValues bound with IOBinding, so with the CUDA EP it never leaves the GPU between decode steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelrefer_ros.runtime.stages import (
    CropFeatures,
    KVState,
    StageBackend,
    object_graph_inputs,
    vision_graph_inputs,
)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
GRAPHS = ("vision", "objects", "prefill", "decode")
EMBEDDINGS_FILE = "embed_tokens.npy"
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


class EngineError(ValueError):
    """The engine directory is missing, incomplete, or was made from another checkpoint/tool."""


def read_manifest(engine_dir: str | Path, checkpoint_hash: str | None = None) -> dict[str, Any]:
    """manifest.json of an engine directory; refuses one exported from another checkpoint."""
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST_FILE
    if not path.is_file():
        raise EngineError(f"{engine_dir}: no {MANIFEST_FILE}; create the engine directory with "
                          f"`pixelrefer-export CKPT_DIR --out {engine_dir}`")
    reexport = f"re-export with `pixelrefer-export CKPT_DIR --out {engine_dir}`"
    try:  # a truncated or hand-edited manifest must not surface as a bare KeyError
        manifest = json.loads(path.read_text())
        fmt = manifest.get("format")
        exported = manifest["checkpoint"] if fmt == MANIFEST_FORMAT else {}
        exported_hash, exported_dir = exported.get("hash"), exported.get("dir")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EngineError(f"{path} is not a valid manifest ({type(exc).__name__}: {exc}); "
                          f"{reexport}") from None
    if fmt != MANIFEST_FORMAT:
        raise EngineError(f"{path}: manifest format {fmt!r}, this runtime reads format "
                          f"{MANIFEST_FORMAT}; re-export the checkpoint")
    if checkpoint_hash is not None and exported_hash != checkpoint_hash:
        raise EngineError(f"{engine_dir} was exported from checkpoint hash {exported_hash} "
                          f"({exported_dir}), but the loaded checkpoint has hash "
                          f"{checkpoint_hash}; re-export it")
    return manifest


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Provider names (aliases cpu/cuda/tensorrt accepted) that this onnxruntime build has."""
    import onnxruntime as ort

    names = [PROVIDER_ALIASES.get(p, p) for p in (requested or ["cpu"])]
    available = ort.get_available_providers()
    missing = [p for p in names if p not in available]
    if missing:
        raise ValueError(f"onnxruntime provider(s) {missing} are not in this onnxruntime build "
                         f"(available: {available}); e.g. CUDA needs the onnxruntime-gpu wheel")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")  # fallback for ops the accelerator lacks
    return names


class OrtBackend(StageBackend):
    """Runs vision/objects/prefill/decode graphs with onnxruntime; see StageBackend."""

    name = "onnxruntime"

    def __init__(self, engine_dir: str | Path, checkpoint_hash: str | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.engine_dir = Path(engine_dir)
        self.manifest = read_manifest(self.engine_dir, checkpoint_hash)
        self.providers = resolve_providers(providers)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {}
        for name in GRAPHS:
            path = self.engine_dir / self.manifest["graphs"][name]["file"]
            if not path.is_file():
                raise EngineError(f"{path} is missing; re-export with pixelrefer-export")
            self.sessions[name] = ort.InferenceSession(str(path), opts,
                                                       providers=self.providers)
        self.embeddings = np.load(self.engine_dir / EMBEDDINGS_FILE, mmap_mode="r")  # [V, H]
        # where IOBinding keeps outputs: on the GPU when an accelerator provider runs the graph
        self.kv_device = "cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu"
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def _run(self, graph: str, feeds: dict[str, Any]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, {k: _np(v) for k, v in feeds.items()})

    def encode(self, pixel_values: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
        """One graph call per image: the graph takes packed images, but its dense [P, P] mask
        would cost (sum P)^2 instead of sum P^2 (same result either way)."""
        sizes = [gh * gw for gh, gw in grids]
        if sum(sizes) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} patch rows but grids {list(grids)} hold "
                             f"{sum(sizes)}")
        out = []
        for pv, grid in zip(pixel_values.float().split(sizes), grids, strict=True):
            positions, segments = vision_graph_inputs([grid])
            out += self._run("vision", {"pixel_values": pv, "positions": positions,
                                        "segments": segments})
        return torch.from_numpy(np.concatenate(out))

    def object_tokens(self, crops: Sequence[CropFeatures], local: Tensor,
                      global_: Tensor) -> Tensor:
        out = []
        for i, crop in enumerate(crops):
            cells, positions, valid = object_graph_inputs(crop)
            (tokens,) = self._run("objects", {"cells": cells, "positions": positions,
                                              "valid": valid, "local": local[i].float(),
                                              "global": global_[i].float()})
            out.append(torch.from_numpy(tokens))
        return torch.cat(out)  # [O*K, H]

    def embed(self, ids: Tensor) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.embeddings[ids.cpu().numpy()]))

    def prefill(self, embeds: Tensor, max_seq_len: int) -> tuple[Tensor, KVState]:
        logits, k, v = self._bound("prefill", {"inputs_embeds": embeds.float()})
        return logits, KVState(embeds.shape[1], k, v)

    def decode(self, token: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        token = token.to(torch.int32).reshape(1, 1)
        logits, k, v = self._bound("decode", {"token": token, "past_k": state.past_k,
                                              "past_v": state.past_v})
        return logits, KVState(state.length + 1, k, v)

    def _bound(self, graph: str, feeds: dict[str, Any]) -> tuple[Tensor, Any, Any]:
        """Run an LLM graph; present_k/v stay OrtValues (on the accelerator if there is one)."""
        import onnxruntime as ort

        sess = self.sessions[graph]
        binding = sess.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, _np(value))
        binding.bind_output("logits", "cpu")
        binding.bind_output("present_k", self.kv_device)
        binding.bind_output("present_v", self.kv_device)
        sess.run_with_iobinding(binding)
        logits, k, v = binding.get_outputs()
        return torch.from_numpy(logits.numpy()), k, v

    def close(self) -> None:
        self.sessions.clear()


def _np(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
