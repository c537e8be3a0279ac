"""One interface over the model's stage calls, so torch, onnxruntime and TensorRT are swappable.

`RegionPipeline` (model/pipeline.py) only talks to a `StageBackend`; `generate` is the one greedy
loop (model.generate.greedy_loop) driving any backend's prefill/decode. The stage boundaries are
the exported graphs' (export/graphs.py), and the host-side glue that maps a stage call onto a
graph's inputs (`vision_graph_inputs`, `object_graph_inputs`) is shared by every graph backend.
ROS-free; exchanged tensors are torch tensors on `backend.device`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrefer_ros.model.generate import GenerationResult, greedy_loop
from pixelrefer_ros.model.object_tokenizer import position_grid

if TYPE_CHECKING:
    from pixelrefer_ros.model.loader import LoadedModel
    from pixelrefer_ros.model.pixelrefer import PixelReferLite

STAGE_BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass
class CropFeatures:
    """One object's SAOT inputs: ViT crop features [hc, wc, C], its mask grid [gh, gw] (float,
    > 0 = object), the padded box (top, left, bottom, right) and the original image (h, w)."""

    feats: Tensor
    mask_grid: Tensor
    box: tuple[int, int, int, int]
    orig_hw: tuple[int, int]


@dataclass
class KVState:
    """Opaque per-request LLM state: `length` tokens are cached. torch keeps them in its static
    cache (past_k/v None); graph backends carry past_k/v [L, 1, H_kv, length, D] here."""

    length: int
    past_k: Any = None
    past_v: Any = None
    shared: bool = False  # torch: the tokens sit in the backend's shared cache (graph decode)


class StageBackend:
    """The stage calls every backend implements (shapes for one request, batch 1).

    - `encode(pixel_values [P, 588] f32, grids [(gh, gw)]) -> [P, C]`: one packed ViT call;
      images attend only within themselves (block-diagonal), RoPE restarts per image.
    - `object_tokens(crops [O], local [O, Pl, C], global_ [O, Pg, C]) -> [O*K, H]`: SAOT
      pooling (deterministic k-means), OCI and the feature MLP, objects independent.
    - `embed(ids [T] long) -> [T, H]`.
    - `prefill(embeds [1, T, H], max_seq_len) -> (logits [1, V], KVState)`: positions 0..T-1;
      `max_seq_len` bounds T plus every later decode step (static caches size to it).
    - `decode(token [1, 1] long, state) -> (logits [1, V], KVState)`: the next position.
    `device`/`dtype` say where the host should put the tensors it passes in. Not thread-safe.
    """

    name = "abstract"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def encode(self, pixel_values: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
        raise NotImplementedError

    def object_tokens(self, crops: Sequence[CropFeatures], local: Tensor,
                      global_: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def prefill(self, embeds: Tensor, max_seq_len: int) -> tuple[Tensor, KVState]:
        raise NotImplementedError

    def decode(self, token: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        raise NotImplementedError

    def close(self) -> None:
        """Release caches/sessions (the node's on_deactivate)."""


class TorchBackend(StageBackend):
    """The PyTorch reference: the model's own stage methods and its static KV cache.

    static_cache_tokens > 0 keeps one KV cache of that many positions for every request whose
    prompt plus new tokens fit (longer ones get a cache of their own, as with 0), and on CUDA
    replays each decode step over it as a CUDA graph (runtime/decode_graph.py), captured at the
    first decode. On the CPU the shared cache only saves the per-request allocation.
    """

    name = "torch"

    def __init__(self, model: PixelReferLite, static_cache_tokens: int = 0) -> None:
        self.model = model
        self.device, self.dtype = model.device, model.dtype
        # never above the model's positions: setup_caches would refuse it on the first request
        self.static_cache_tokens = min(static_cache_tokens,
                                       model.llm.cfg.max_position_embeddings)
        self._static_caches: list | None = None  # the shared cache (one KVCache per layer)
        self._graph = None  # DecodeGraph, over the shared cache

    def encode(self, pixel_values: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
        return self.model.vision(pixel_values.to(self.device, self.dtype), grids)

    def object_tokens(self, crops: Sequence[CropFeatures], local: Tensor,
                      global_: Tensor) -> Tensor:
        obj = self.model.objects
        queries = torch.stack([obj.pool_object(c.feats, c.mask_grid, c.box, c.orig_hw)
                               for c in crops])  # [O, K, C]
        return obj.project(obj.infuse(queries, local, global_))  # [O*K, H]

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.llm.embed(ids)

    def _install_static_caches(self) -> None:
        """Allocate the shared cache once, and put it back when a request too long for it
        installed caches of its own."""
        llm = self.model.llm
        if self._static_caches is None:
            self._static_caches = llm.setup_caches(1, self.static_cache_tokens)
        else:
            llm.install_caches(self._static_caches)

    def prefill(self, embeds: Tensor, max_seq_len: int) -> tuple[Tensor, KVState]:
        llm, t = self.model.llm, embeds.shape[1]
        shared = max_seq_len <= self.static_cache_tokens and embeds.dtype == self.dtype
        if shared:
            self._install_static_caches()
        else:
            llm.setup_caches(1, max_seq_len, dtype=embeds.dtype, device=embeds.device)
        logits = llm(embeds, torch.arange(t, device=embeds.device), last_only=True)[:, -1]
        return logits, KVState(t, shared=shared)

    def decode(self, token: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        llm = self.model.llm
        if state.shared and self.device.type == "cuda":
            if self._graph is None:
                from pixelrefer_ros.runtime.decode_graph import DecodeGraph

                self._graph = DecodeGraph(llm, self.device)
            return self._graph.step(token, state.length), KVState(state.length + 1, shared=True)
        pos = torch.tensor([state.length], device=token.device)
        logits = llm(llm.embed(token), pos, last_only=True)[:, -1]
        return logits, KVState(state.length + 1, shared=state.shared)

    def close(self) -> None:
        self.model.llm.release_caches()
        self._static_caches = self._graph = None


@torch.inference_mode()
def generate(backend: StageBackend, prompt_embeds: Tensor, max_new_tokens: int, eos_id: int,
             callback: Callable[[int], None] | None = None, deadline: float | None = None,
             return_logits: bool = False) -> GenerationResult:
    """Greedy decoding of spliced prompt embeddings [T, H] on any backend (batch 1)."""
    if prompt_embeds.dim() != 2:
        raise ValueError(f"prompt_embeds must be [T, H], got {tuple(prompt_embeds.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    t = prompt_embeds.shape[0]
    state = KVState(0)

    def first() -> Tensor:
        nonlocal state
        logits, state = backend.prefill(prompt_embeds[None], t + max_new_tokens)
        return logits

    def step(token: Tensor, pos: int) -> Tensor:
        nonlocal state
        if pos != state.length:
            raise RuntimeError(f"decode at position {pos} but {state.length} tokens are cached")
        logits, state = backend.decode(token.view(1, 1), state)
        return logits

    return greedy_loop(first, step, t, max_new_tokens, eos_id, callback, deadline,
                       return_logits)


# ----------------------------------------------------------------------------- graph inputs

def vision_graph_inputs(grids: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(positions [P, 2] int32 (row, col), segments [P] int32 image index) in raster order."""
    positions, segments = [], []
    for i, (gh, gw) in enumerate(grids):
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        positions.append(np.stack([rows.ravel(), cols.ravel()], axis=1))
        segments.append(np.full(gh * gw, i))
    return (np.concatenate(positions).astype(np.int32),
            np.concatenate(segments).astype(np.int32))


def object_graph_inputs(crop: CropFeatures) -> tuple[Tensor, Tensor, Tensor]:
    """One object -> the objects graph's (cells [G, C], positions [G, 2], valid [G] bool).

    The reference adds pos_linear(pos) and then resizes to the mask grid; bilinear weights sum
    to one and pos_linear is affine, so resizing features and coordinates separately here and
    adding in the graph is the same map (equal up to rounding; bit-equal without a resize, the
    usual case: the crop is only resized when the processor's pixel cap shrank it).
    """
    feats = crop.feats.float()
    hc, wc, c = feats.shape
    pos = position_grid(hc, wc, crop.box, crop.orig_hw).to(feats.device)  # [hc, wc, 2]
    gh, gw = crop.mask_grid.shape
    if (hc, wc) != (gh, gw):
        both = torch.cat([feats, pos], dim=-1).permute(2, 0, 1)[None]  # [1, C+2, hc, wc]
        both = F.interpolate(both, size=(gh, gw), mode="bilinear", align_corners=False)
        both = both[0].permute(1, 2, 0)  # [gh, gw, C+2]
        feats, pos = both[..., :c], both[..., c:]
    valid = (crop.mask_grid.to(feats.device) > 0).reshape(-1)
    return feats.reshape(-1, c).contiguous(), pos.reshape(-1, 2).contiguous(), valid


def make_backend(name: str, loaded: LoadedModel, engine_dir: str | Path | None = None,
                 device: str = "cpu", precision: str = "fp32",
                 providers: Sequence[str] | None = None,
                 force_engine_update: bool = False, static_cache_tokens: int = 0
                 ) -> StageBackend:
    """The backend named by an explicit config value (the node's `backend` parameter).

    torch needs `loaded.model`; onnxruntime and tensorrt need `engine_dir` (made by
    pixelrefer-export) and check that it was exported from `loaded`'s checkpoint. onnxruntime
    runs the fp32 graphs on `providers` (default: from `device`); tensorrt needs a CUDA device.
    """
    if name not in STAGE_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(STAGE_BACKENDS)}")
    if name == "torch":
        if loaded.model is None:
            raise ValueError("the torch backend needs the checkpoint weights (load with "
                             "weights=True)")
        return TorchBackend(loaded.model, static_cache_tokens)
    if engine_dir is None:
        raise ValueError(f"backend {name!r} needs an engine directory (pixelrefer-export "
                         "CKPT --out ENGINE_DIR)")
    if name == "onnxruntime":
        from pixelrefer_ros.runtime.ort_backend import OrtBackend

        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs the fp32 ONNX graphs; precision "
                             f"{precision!r} applies to backend tensorrt (use precision fp32)")
        if providers is None:
            providers = ["cpu"] if device == "cpu" else ["cuda"]
        return OrtBackend(engine_dir, loaded.checkpoint_hash, providers=providers)
    from pixelrefer_ros.runtime.trt_backend import TensorRTBackend

    if not device.startswith("cuda"):
        raise ValueError(f"the tensorrt backend runs on a CUDA device, not {device!r}; set "
                         "device to cuda or cuda:<index>")
    return TensorRTBackend(engine_dir, loaded.checkpoint_hash, precision=precision,
                           force_engine_update=force_engine_update, device=device)
