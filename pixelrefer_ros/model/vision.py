"""SigLIP-NaViT vision encoder (DAMOVL / VL3-SigLIP-NaViT, spec §1.4).

A plain pre-LN transformer over 14x14 patches with no absolute position embedding: positions enter
only through a 2-D rotary embedding on q/k. Several images are packed into one sequence and attend
only within themselves (block-diagonal attention), which we compute with one SDPA call per image.

Parameter names equal the official keys minus `model.vision_encoder.vision_encoder.`, so a state
dict loads with strict=True.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

GridHW = tuple[int, int]


# ----------------------------------------------------------------------------- 2-D RoPE

def rope_angles(grid_hw: Sequence[GridHW], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary angles [P, D/2] for the packed patches: [row * inv_freq, col * inv_freq] per patch.

    Each axis gets D/4 frequencies; positions restart at (0, 0) for every image. The float32 ops
    match the official `VisionRotaryEmbedding` (outer product of arange and inv_freq).
    """
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # [D/4]
    angles = []
    for gh, gw in grid_hw:
        rows = torch.arange(gh, dtype=torch.float32).repeat_interleave(gw)  # [gh*gw] raster order
        cols = torch.arange(gw, dtype=torch.float32).repeat(gh)
        angles.append(torch.cat([torch.outer(rows, inv_freq), torch.outer(cols, inv_freq)], dim=-1))
    return torch.cat(angles, dim=0)  # [P, D/2]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: dims i and i + D/2 form one rotation pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [P, H, D]; cos/sin [P, D]. Rotated in float32, returned in x's dtype (as official)."""
    xf = x.float()
    out = xf * cos[:, None, :] + rotate_half(xf) * sin[:, None, :]
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- layers

class VisionAttention(nn.Module):
    """Multi-head self-attention with 2-D RoPE, restricted to each image of the packed sequence."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        c = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj, self.k_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.v_proj, self.out_proj = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                lengths: list[int]) -> torch.Tensor:
        p = x.shape[0]  # x [P, C]
        q = apply_rope(self.q_proj(x).view(p, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(p, self.num_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(p, self.num_heads, self.head_dim)
        outs = []
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
            # [Pi, H, D] -> [1, H, Pi, D]: full attention within one image, scale D^-0.5. The
            # batch dim matters: with 3-D inputs PyTorch's CPU path takes the math kernel, which
            # holds the [H, Pi, Pi] scores: +2.4 GB and 4.4 s to encode the 8,100-patch crop
            # that the official zoom gives a 1-pixel mask (more at the 2B model's 16 heads).
            # 4-D inputs get the flash kernel: +167 MiB and 0.8 s (bench/bench_region_cost.py),
            # and the same parity (max |diff| 2.3e-5 vs 2.2e-5 against the official features).
            qi, ki, vi = (t.transpose(0, 1)[None] for t in (qi, ki, vi))
            o = F.scaled_dot_product_attention(qi, ki, vi)[0]
            outs.append(o.transpose(0, 1))
        return self.out_proj(torch.cat(outs, dim=0).reshape(p, -1))  # [P, C]


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_pytorch_tanh


class VisionEncoderLayer(nn.Module):
    """Pre-LN block: x += Attn(LN1(x)); x += MLP(LN2(x))."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                lengths: list[int]) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cos, sin, lengths)
        return x + self.mlp(self.layer_norm2(x))


class _LayerStack(nn.Module):
    """Holds `layers` so that parameter names read `encoder.layers.{i}.*` like the official."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class _PatchEmbedding(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        p = cfg.patch_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Each row is one patch flattened as (3, 14, 14), so the conv sees P independent 14x14
        # images and returns [P, C, 1, 1]. Mathematically this is [P, 588] @ W.view(C, 588).T,
        # but the conv kernel reproduces the official fp32 values bit for bit (the matmul
        # differs by up to 4e-5 after the encoder on the fixtures).
        w = self.patch_embedding.weight  # [C, 3, 14, 14]
        patches = pixel_values.to(w.dtype).view(-1, *w.shape[1:])  # [P, 3, 14, 14]
        return self.patch_embedding(patches).view(-1, w.shape[0])  # [P, C]


# ----------------------------------------------------------------------------- encoder

class VisionEncoder(nn.Module):
    """Packed patches of several images -> per-patch features after `post_layernorm`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = _PatchEmbedding(cfg)
        self.encoder = _LayerStack(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, grid_hw: Sequence[GridHW]) -> torch.Tensor:
        """pixel_values [P, 588] (images concatenated in order), grid_hw [(gh, gw)] -> [P, C]."""
        lengths = [gh * gw for gh, gw in grid_hw]
        if pixel_values.shape[0] != sum(lengths):
            raise ValueError(f"{pixel_values.shape[0]} patch rows but grids {list(grid_hw)} "
                             f"hold {sum(lengths)}")
        angles = rope_angles(grid_hw, self.cfg.head_dim, self.cfg.rope_theta)
        angles = angles.to(pixel_values.device)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # [P, D]: same angle for i, i+D/2
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
        x = self.embeddings(pixel_values)  # [P, C]
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, lengths)
        return self.post_layernorm(x)

    def encode_images(self, pixel_values_list: Sequence[torch.Tensor],
                      grid_list: Sequence[GridHW]) -> list[torch.Tensor]:
        """Pack images into one call (as the official does per pass), return [gh, gw, C] each."""
        feats = self(torch.cat(list(pixel_values_list), dim=0), grid_list)  # [P, C]
        parts = feats.split([gh * gw for gh, gw in grid_list])
        return [f.view(gh, gw, -1) for f, (gh, gw) in zip(parts, grid_list, strict=True)]
