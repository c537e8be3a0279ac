"""The exported stage graphs as thin nn.Modules over an already-built PixelReferLite.

Each wrapper reuses the model's own submodules and helpers; it only replaces what an exporter
cannot trace: Python lists of image sizes (vision), the data-dependent gather and k-means loop
(objects) and the in-place KV cache (LLM). The graph boundaries are the runtime's stage calls
(pixelrefer_ros/runtime/stages.py), so the same inputs drive torch, onnxruntime and TensorRT.

Shape letters: P packed patches, C ViT width, G object cells, K tokens per object, Pl/Pg local
and global patches, H LLM width, T prompt tokens, L layers, H_kv kv heads, S past length,
D head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrefer_ros.model.object_tokenizer import kmeans_static
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.vision import apply_rope

GRAPH_NAMES = ("vision", "objects", "prefill", "decode")


class VisionGraph(nn.Module):
    """pixel_values [P, 588], positions [P, 2] int32 (row, col), segments [P] int32 -> [P, C].

    Several images are packed as in the reference; `segments` (image index per patch) turns the
    per-image SDPA loop into one masked attention, and the 2-D RoPE angles are built in the graph
    from `positions`, so P is the only dynamic axis.
    """

    def __init__(self, model: PixelReferLite) -> None:
        super().__init__()
        self.vision = model.vision
        cfg = model.vision.cfg
        dim = cfg.head_dim // 2
        # the same float32 arithmetic as vision.rope_angles
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [D/4]

    def forward(self, pixel_values: Tensor, positions: Tensor, segments: Tensor) -> Tensor:
        pos = positions.float()
        angles = torch.cat([pos[:, :1] * self.inv_freq, pos[:, 1:] * self.inv_freq], dim=-1)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # [P, D]
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
        same_image = segments[:, None] == segments[None, :]  # [P, P] block-diagonal
        x = self.vision.embeddings(pixel_values)  # [P, C]
        for layer in self.vision.encoder.layers:
            x = x + _masked_vision_attention(layer.self_attn, layer.layer_norm1(x), cos, sin,
                                             same_image)
            x = x + layer.mlp(layer.layer_norm2(x))
        return self.vision.post_layernorm(x)


def _masked_vision_attention(attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor,
                             mask: Tensor) -> Tensor:
    """VisionAttention.forward with one masked SDPA instead of a loop over images."""
    p = x.shape[0]
    q = apply_rope(attn.q_proj(x).view(p, attn.num_heads, attn.head_dim), cos, sin)
    k = apply_rope(attn.k_proj(x).view(p, attn.num_heads, attn.head_dim), cos, sin)
    v = attn.v_proj(x).view(p, attn.num_heads, attn.head_dim)
    # [P, H, D] -> [1, H, P, D] (exporters want 4-D SDPA); the mask [P, P] broadcasts
    q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [1, H, P, D]
    return attn.out_proj(o[0].transpose(0, 1).reshape(p, -1))  # [P, C]


class ObjectsGraph(nn.Module):
    """One object: cells [G, C], positions [G, 2], valid [G] bool, local [Pl, C],
    global_ [Pg, C] -> tokens [K, H].

    `cells`/`positions` are the crop features and their coordinate grid, already on the mask
    grid (runtime.stages.object_graph_inputs); invalid cells may pad G to any length. The graph
    adds pos_linear, runs the static-shape k-means (a fixed number of one-hot matmul
    iterations, zero rows when fewer than K cells are valid), OCI and the feature MLP.
    """

    def __init__(self, model: PixelReferLite) -> None:
        super().__init__()
        self.objects = model.objects
        cfg = model.objects.cfg
        if cfg.kmeans_init != "deterministic":
            raise ValueError(f"kmeans_init={cfg.kmeans_init!r} cannot be exported: the graph "
                             "uses the deterministic init (spec §4)")
        self.k, self.iterations = cfg.tokens_per_object, cfg.kmeans_iterations

    def forward(self, cells: Tensor, positions: Tensor, valid: Tensor, local: Tensor,
                global_: Tensor) -> Tensor:
        obj = self.objects
        feats = cells + obj.pos_linear(positions)  # [G, C]
        queries = kmeans_static(feats, valid, self.k, self.iterations)[None]  # [1, K, C]
        return obj.project(obj.infuse(queries, local[None], global_[None]))  # [K, H]


class PrefillGraph(nn.Module):
    """inputs_embeds [1, T, H] -> logits_last [1, V], present_k/v [L, 1, H_kv, T, D].

    Runs the decoder layers without a past (no zero-length tensors, which TensorRT handles
    poorly); the same layers and masks as Qwen2.forward_with_past with P = 0.
    """

    def __init__(self, model: PixelReferLite) -> None:
        super().__init__()
        self.llm = model.llm

    def forward(self, inputs_embeds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        llm = self.llm
        pos = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)  # [T]
        mask = pos[None, :] <= pos[:, None]  # [T, T] causal
        cos, sin = llm._rope(pos, inputs_embeds.dtype)
        x, keys, values = inputs_embeds, [], []
        for layer in llm.layers:
            x, k, v = layer(x, cos, sin, mask)
            keys.append(k)
            values.append(v)
        logits = llm._logits(x, last_only=True)[:, -1]  # [1, V]
        return logits, torch.stack(keys), torch.stack(values)


class DecodeGraph(nn.Module):
    """token [1, 1] int32, past_k/v [L, 1, H_kv, S, D] -> logits [1, V], present_k/v (S+1)."""

    def __init__(self, model: PixelReferLite) -> None:
        super().__init__()
        self.llm = model.llm

    def forward(self, token: Tensor, past_k: Tensor, past_v: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        embeds = self.llm.embed(token)  # [1, 1, H]
        logits, k, v = self.llm.forward_with_past(embeds, past_k, past_v, last_only=True)
        return logits[:, -1], k, v


@dataclass(frozen=True)
class GraphSpec:
    """Names and symbolic shapes of one graph's inputs/outputs (what the manifest records)."""

    inputs: dict[str, tuple[str | int, ...]]
    outputs: dict[str, tuple[str | int, ...]]
    dtypes: dict[str, str]


def graph_specs(model: PixelReferLite) -> dict[str, GraphSpec]:
    cfg = model.config
    c, h, v = cfg.vision.hidden_size, cfg.llm.hidden_size, cfg.llm.vocab_size
    k = cfg.objects.tokens_per_object
    patch = cfg.vision.num_channels * cfg.vision.patch_size**2
    kv = (cfg.llm.num_hidden_layers, 1, cfg.llm.num_key_value_heads)
    d = cfg.llm.head_dim
    f32, i32, b8 = "float32", "int32", "bool"
    return {
        "vision": GraphSpec(
            {"pixel_values": ("patches", patch), "positions": ("patches", 2),
             "segments": ("patches",)},
            {"features": ("patches", c)},
            {"pixel_values": f32, "positions": i32, "segments": i32, "features": f32}),
        "objects": GraphSpec(
            {"cells": ("cells", c), "positions": ("cells", 2), "valid": ("cells",),
             "local": ("local_patches", c), "global": ("global_patches", c)},
            {"tokens": (k, h)},
            {"cells": f32, "positions": f32, "valid": b8, "local": f32, "global": f32,
             "tokens": f32}),
        "prefill": GraphSpec(
            {"inputs_embeds": (1, "prompt", h)},
            {"logits": (1, v), "present_k": (*kv, "prompt", d),
             "present_v": (*kv, "prompt", d)},
            {"inputs_embeds": f32, "logits": f32, "present_k": f32, "present_v": f32}),
        "decode": GraphSpec(
            {"token": (1, 1), "past_k": (*kv, "past", d), "past_v": (*kv, "past", d)},
            {"logits": (1, v), "present_k": (*kv, "past+1", d),
             "present_v": (*kv, "past+1", d)},
            {"token": i32, "past_k": f32, "past_v": f32, "logits": f32, "present_k": f32,
             "present_v": f32}),
    }


def build_graph(name: str, model: PixelReferLite) -> nn.Module:
    graphs = {"vision": VisionGraph, "objects": ObjectsGraph, "prefill": PrefillGraph,
              "decode": DecodeGraph}
    if name not in graphs:
        raise ValueError(f"unknown graph {name!r}; choose one of: {', '.join(GRAPH_NAMES)}")
    return graphs[name](model).eval()
