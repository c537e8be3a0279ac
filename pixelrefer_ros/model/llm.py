"""Qwen2 decoder (the PixelRefer-Lite LLM) in one file, gpt-fast style.

Three entry points share the same layers:

- `forward(embeds, input_pos)`: the fast path. Keys/values are written into a static
  `KVCache` (fixed `[B, H_kv, S_max, D]` buffers from `setup_caches`) at `input_pos`.
- `forward_no_cache(embeds)`: the slow oracle. Recomputes the whole sequence; tests compare
  the fast path against it.
- `forward_with_past(embeds, past_k, past_v)`: a pure function of its inputs (no buffer
  writes), the form an ONNX/TensorRT graph needs, where the cache is an explicit input/output.

Numerics follow HF `Qwen2ForCausalLM` (transformers 4.46): RMSNorm in fp32, RoPE cos/sin built in
fp32 then cast, `rotate_half` convention, kv head `h // n_rep` serves query head `h`.
Parameter names equal the official keys with the leading `model.` stripped.

Shape letters: B batch, T new tokens, S attended length, P past length, L layers,
H/H_kv query/kv heads, D head dim, C hidden size, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LLMConfig


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: normalise in fp32 (bf16 variance is too coarse), scale in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables [T, D] for integer `positions` [T], computed in fp32 like HF.

    Built per call from the positions (D/2 multiplies per token): no buffer to move between
    devices or to lose when the model is constructed on the meta device.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim))  # [D/2]
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]: HF duplicates rather than interleaves
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (HF convention, not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D]; cos/sin [T, D] broadcast over batch and heads."""
    return x * cos + rotate_half(x) * sin


class KVCache(nn.Module):
    """Static per-layer cache [B, H_kv, S_max, D], written at explicit positions (gpt-fast).

    Buffers are non-persistent so they never appear in (or are expected by) the state dict.
    """

    def __init__(self, max_batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None) -> None:
        super().__init__()
        shape = (max_batch, num_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k/v [B, H_kv, T, D] at `input_pos` [T]; return the caches [B, H_kv, S_max, D]."""
        b = k.shape[0]
        self.k_cache[:b, :, input_pos] = k
        self.v_cache[:b, :, input_pos] = v
        return self.k_cache[:b], self.v_cache[:b]


class Attention(nn.Module):
    """Grouped-query self-attention with q/k/v bias and a bias-free output projection."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by "
                             f"num_attention_heads {cfg.num_attention_heads}")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError(f"num_attention_heads {cfg.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads {cfg.num_key_value_heads}")
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        c, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(c, self.n_heads * d, bias=True)
        self.k_proj = nn.Linear(c, self.n_kv_heads * d, bias=True)
        self.v_proj = nn.Linear(c, self.n_kv_heads * d, bias=True)
        self.o_proj = nn.Linear(self.n_heads * d, c, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                cache_pos: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, C], mask [T, S] (True = may attend) -> out [B, T, C], k/v [B, H_kv, S, D].

        With `cache_pos` the new k/v go into the static cache and S = S_max; with `past` they are
        appended to it (S = P + T); with neither S = T (the oracle).
        """
        b, t, _ = x.shape
        # [B, T, H*D] -> [B, T, H, D] -> [B, H, T, D]
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("KV cache not allocated: call setup_caches() first")
            k, v = self.kv_cache.update(cache_pos, k, v)  # [B, H_kv, S_max, D]
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)  # [B, H_kv, P+T, D]
            v = torch.cat((past[1], v), dim=2)

        # GQA: query head h reads kv head h // n_rep (HF repeat_kv), so repeat each kv head.
        n_rep = self.n_heads // self.n_kv_heads
        out = F.scaled_dot_product_attention(
            q, k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1),
            attn_mask=mask)  # [B, H, T, D]
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # [B, T, H*D]
        return self.o_proj(out), k, v


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                cache_pos: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_pos, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Qwen2(nn.Module):
    """Qwen2 body + LM head. Takes embeddings (not ids) so region features can be spliced in."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.max_seq_len = 0  # length of the allocated KV cache; 0 = none
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share embed_tokens' Parameter with lm_head when the config says so.

        Call again after `load_state_dict(..., assign=True)`, which replaces Parameters one by one
        and so breaks the tie.
        """
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # ---- helpers -------------------------------------------------------------------------

    def embed(self, ids: Tensor) -> Tensor:
        """ids [B, T] long -> [B, T, C]."""
        return self.embed_tokens(ids)

    def _rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, dtype)

    def _logits(self, x: Tensor, last_only: bool) -> Tensor:
        """Final norm + head; `last_only` keeps [B, 1, V] (at V=151k the head dominates a step)."""
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    # ---- static KV cache -----------------------------------------------------------------

    def setup_caches(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> list[KVCache]:
        """Allocate one `KVCache` per layer with fixed [max_batch, H_kv, max_seq_len, D] buffers
        and install them; returns them, so a caller can `install_caches` them again later."""
        if max_seq_len > self.cfg.max_position_embeddings:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}")
        ref = self.embed_tokens.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        caches = [KVCache(max_batch, self.cfg.num_key_value_heads, max_seq_len,
                          self.cfg.head_dim, dtype, device) for _ in self.layers]
        self.install_caches(caches)
        return caches

    def install_caches(self, caches: list[KVCache]) -> None:
        """Use `caches` (one per layer, from `setup_caches`) from now on: e.g. the cache that a
        captured CUDA graph reads, after another request installed caches of its own."""
        for layer, cache in zip(self.layers, caches, strict=True):
            layer.self_attn.kv_cache = cache
        self.max_seq_len = caches[0].k_cache.shape[2]

    def release_caches(self) -> None:
        """Drop the KV buffers (frees device memory, e.g. when a node deactivates)."""
        for layer in self.layers:
            layer.self_attn.kv_cache = None
        self.max_seq_len = 0

    def forward(self, embeds: Tensor, input_pos: Tensor, last_only: bool = False) -> Tensor:
        """Cached step: embeds [B, T, C] at positions `input_pos` [T] -> logits [B, T or 1, V].

        Writes k/v into the caches at `input_pos`; attends to every cached slot whose position is
        <= the query's (slots not yet written are masked, so stale contents never leak in).
        Positions must be < max_seq_len; the caller checks on the host (no device sync here).
        """
        if self.max_seq_len == 0:
            raise RuntimeError("KV cache not allocated: call setup_caches() first")
        slots = torch.arange(self.max_seq_len, device=embeds.device)
        mask = slots[None, :] <= input_pos[:, None]  # [T, S_max]
        cos, sin = self._rope(input_pos, embeds.dtype)
        x = embeds
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin, mask, cache_pos=input_pos)
        return self._logits(x, last_only)

    # ---- slow oracle ---------------------------------------------------------------------

    def forward_no_cache(self, embeds: Tensor, last_only: bool = False) -> Tensor:
        """Recompute the full causal sequence: embeds [B, T, C] -> logits [B, T or 1, V]."""
        t = embeds.shape[1]
        pos = torch.arange(t, device=embeds.device)
        mask = pos[None, :] <= pos[:, None]  # [T, T] lower triangle
        cos, sin = self._rope(pos, embeds.dtype)
        x = embeds
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin, mask)
        return self._logits(x, last_only)

    # ---- export-friendly functional step -------------------------------------------------

    def forward_with_past(self, embeds: Tensor, past_k: Tensor, past_v: Tensor,
                          last_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Pure step: embeds [B, T, C], past_k/v [L, B, H_kv, P, D] (P may be 0).

        Returns (logits [B, T or 1, V], present_k/v [L, B, H_kv, P+T, D]). The new tokens take
        positions P..P+T-1. Nothing is written in place, so an exporter can trace it.
        """
        p, t = past_k.shape[3], embeds.shape[1]
        pos = torch.arange(p, p + t, device=embeds.device)  # [T]
        keys = torch.arange(p + t, device=embeds.device)  # [P+T]
        mask = keys[None, :] <= pos[:, None]  # [T, P+T]
        cos, sin = self._rope(pos, embeds.dtype)
        x = embeds
        present_k, present_v = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, mask, past=(past_k[i], past_v[i]))
            present_k.append(k)
            present_v.append(v)
        return self._logits(x, last_only), torch.stack(present_k), torch.stack(present_v)

    def empty_past(self, batch: int = 1, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Zero-length past [L, B, H_kv, 0, D] for the first `forward_with_past` call."""
        ref = self.embed_tokens.weight
        shape = (self.cfg.num_hidden_layers, batch, self.cfg.num_key_value_heads, 0,
                 self.cfg.head_dim)
        empty = torch.zeros(shape, dtype=dtype or ref.dtype, device=device or ref.device)
        return empty, empty.clone()
