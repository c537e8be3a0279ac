"""Qwen2 decoder and generation loop on tiny random configs (no checkpoint needed).

The cached paths are checked against the no-cache oracle; the generation loop's bounds
(max_new_tokens, eos, deadline) are checked directly.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch

from pixelrefer_ros.model.config import LLMConfig
from pixelrefer_ros.model.generate import generate, generate_no_cache
from pixelrefer_ros.model.llm import Qwen2

TINY = LLMConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0,
                 max_position_embeddings=256, tie_word_embeddings=True)
VARIANTS = {
    "gqa_tied": TINY,
    "mha_untied": replace(TINY, num_key_value_heads=4, tie_word_embeddings=False),
    "mqa_untied": replace(TINY, num_key_value_heads=1, tie_word_embeddings=False),
}


def tiny_model(cfg: LLMConfig, seed: int = 0) -> Qwen2:
    """Random weights large enough that greedy tokens vary (the fixtures' init rule, §2.3)."""
    torch.manual_seed(seed)
    model = Qwen2(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.02 * r)
            elif name == "embed_tokens.weight":
                p.copy_(0.1 * r)
            else:
                gain = 3.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(gain * r / math.sqrt(p.shape[1]))
    return model.eval()


def prompt(cfg: LLMConfig, t: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randn(t, cfg.hidden_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_generation_matches_oracle(variant):
    cfg = VARIANTS[variant]
    model = tiny_model(cfg)
    embeds = prompt(cfg)
    fast = generate(model, embeds, max_new_tokens=20, eos_id=-1, return_logits=True)
    slow = generate_no_cache(model, embeds, max_new_tokens=20, eos_id=-1, return_logits=True)
    assert fast.token_ids == slow.token_ids
    assert len(set(fast.token_ids)) > 3, "degenerate test: greedy tokens barely vary"
    torch.testing.assert_close(fast.step_logits, slow.step_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_forward_with_past_matches_cached_forward(variant):
    cfg = VARIANTS[variant]
    model = tiny_model(cfg)
    embeds = prompt(cfg, t=9)[None]  # [1, 9, C]
    chunks = [(0, 5), (5, 8), (8, 9)]  # prefill, a 3-token chunk, one decode step
    model.setup_caches(1, 16)
    past_k, past_v = model.empty_past()
    for lo, hi in chunks:
        x = embeds[:, lo:hi]
        cached = model(x, torch.arange(lo, hi))
        functional, past_k, past_v = model.forward_with_past(x, past_k, past_v)
        torch.testing.assert_close(functional, cached, atol=1e-5, rtol=0)
        assert past_k.shape == (cfg.num_hidden_layers, 1, cfg.num_key_value_heads, hi,
                                cfg.head_dim)
    for i, layer in enumerate(model.layers):
        torch.testing.assert_close(past_k[i], layer.self_attn.kv_cache.k_cache[:, :, :9])
        torch.testing.assert_close(past_v[i], layer.self_attn.kv_cache.v_cache[:, :, :9])
    # Chunked cached logits equal one full recompute.
    torch.testing.assert_close(model(embeds[:, 8:], torch.tensor([8])),
                               model.forward_no_cache(embeds)[:, 8:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_last_only_equals_last_row():
    model = tiny_model(TINY)
    embeds = prompt(TINY)[None]
    full = model.forward_no_cache(embeds)
    torch.testing.assert_close(model.forward_no_cache(embeds, last_only=True), full[:, -1:])


def test_fp32_deterministic():
    a = generate(tiny_model(TINY), prompt(TINY), 12, eos_id=-1, return_logits=True)
    b = generate(tiny_model(TINY), prompt(TINY), 12, eos_id=-1, return_logits=True)
    assert a.token_ids == b.token_ids
    assert torch.equal(a.step_logits, b.step_logits)


@torch.no_grad()
def test_gqa_equals_mha_with_repeated_kv_heads():
    """Query head h must read kv head h // n_rep (HF repeat_kv), not h % H_kv."""
    gqa = tiny_model(TINY)
    mha = Qwen2(replace(TINY, num_key_value_heads=TINY.num_attention_heads)).eval()
    n_rep, d = TINY.num_attention_heads // TINY.num_key_value_heads, TINY.head_dim
    state = {}
    for name, p in gqa.state_dict().items():
        if ".k_proj." in name or ".v_proj." in name:  # [H_kv*D, ...] -> [H*D, ...]
            heads = p.view(TINY.num_key_value_heads, d, *p.shape[1:])
            p = heads.repeat_interleave(n_rep, dim=0).reshape(-1, *p.shape[1:])
        state[name] = p
    mha.load_state_dict(state)
    embeds = prompt(TINY)[None]
    torch.testing.assert_close(mha.forward_no_cache(embeds), gqa.forward_no_cache(embeds),
                               atol=1e-5, rtol=0)


def test_tied_and_untied_heads():
    tied = Qwen2(TINY)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    untied = Qwen2(replace(TINY, tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    with torch.no_grad():
        untied.lm_head.weight.zero_()
        logits = untied.forward_no_cache(prompt(TINY)[None])
    assert torch.count_nonzero(logits) == 0  # the untied head, not the embedding, is used


def test_state_dict_names_match_official_keys():
    model = Qwen2(TINY)
    model.setup_caches(1, 8)  # cache buffers must not leak into the state dict
    expected = {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    for i in range(TINY.num_hidden_layers):
        expected |= {f"layers.{i}.input_layernorm.weight",
                     f"layers.{i}.post_attention_layernorm.weight",
                     f"layers.{i}.self_attn.o_proj.weight"}
        for proj in ("q", "k", "v"):
            expected |= {f"layers.{i}.self_attn.{proj}_proj.weight",
                         f"layers.{i}.self_attn.{proj}_proj.bias"}
        for proj in ("gate", "up", "down"):
            expected.add(f"layers.{i}.mlp.{proj}_proj.weight")
    assert set(model.state_dict()) == expected


def test_cache_errors():
    model = tiny_model(TINY)
    with pytest.raises(RuntimeError, match="setup_caches"):
        model(prompt(TINY)[None], torch.arange(11))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.setup_caches(1, TINY.max_position_embeddings + 1)
    model.setup_caches(1, 8)
    model.release_caches()
    assert all(layer.self_attn.kv_cache is None for layer in model.layers)


def test_generate_allocates_exact_cache():
    model = tiny_model(TINY)
    generate(model, prompt(TINY, t=11), max_new_tokens=5, eos_id=-1)
    assert model.max_seq_len == 16
    assert model.layers[0].self_attn.kv_cache.k_cache.shape == (1, 2, 16, TINY.head_dim)


def test_max_new_tokens_bound_and_callback():
    model = tiny_model(TINY)
    streamed: list[int] = []
    res = generate(model, prompt(TINY), max_new_tokens=7, eos_id=-1, callback=streamed.append)
    assert len(res.token_ids) == 7 and res.stopped == "max_new_tokens"
    assert streamed == res.token_ids
    assert res.prefill_s > 0 and res.decode_s > 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt(TINY), max_new_tokens=0, eos_id=-1)


def test_stops_on_eos_and_excludes_it():
    model = tiny_model(TINY)
    free = generate(model, prompt(TINY), max_new_tokens=12, eos_id=-1).token_ids
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # first new token value
    res = generate(model, prompt(TINY), 12, eos_id=free[k], return_logits=True)
    assert res.token_ids == free[:k] and res.stopped == "eos" and res.stopped_on_eos
    assert res.step_logits.shape[0] == k + 1  # the eos decision is recorded too
    oracle = generate_no_cache(model, prompt(TINY), 12, eos_id=free[k])
    assert oracle.token_ids == free[:k] and oracle.stopped == "eos"


def test_deadline_already_passed():
    res = generate(tiny_model(TINY), prompt(TINY), 10, eos_id=-1, deadline=time.monotonic())
    assert res.token_ids == [] and res.stopped == "deadline"


def test_deadline_during_decode():
    model = tiny_model(TINY)
    res = generate(model, prompt(TINY), 50, eos_id=-1, callback=lambda _: time.sleep(0.05),
                   deadline=time.monotonic() + 0.12)
    assert res.stopped == "deadline"
    assert 1 <= len(res.token_ids) < 50


def test_bf16_runs_and_matches_loosely():
    model = tiny_model(TINY)
    ref = model.forward_no_cache(prompt(TINY)[None]).detach()
    model = model.to(torch.bfloat16)
    res = generate(model, prompt(TINY).bfloat16(), 4, eos_id=-1)
    assert len(res.token_ids) == 4
    with torch.no_grad():
        low = model.forward_no_cache(prompt(TINY)[None].bfloat16())
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.25 * ref.abs().max()


def test_meta_construction_then_assign_load_keeps_tie():
    """The loader's path: build on meta, load with assign=True, re-tie (no buffers stay on meta)."""
    ref = tiny_model(TINY)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    with torch.device("meta"):
        model = Qwen2(TINY)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    assert model.lm_head.weight is model.embed_tokens.weight
    res = generate(model.eval(), prompt(TINY), 6, eos_id=-1)
    assert res.token_ids == generate(ref, prompt(TINY), 6, eos_id=-1).token_ids
