"""Greedy generation as small functions (gpt-fast generate.py style).

`prefill` and `decode_one_token` are the only two model calls; `greedy_loop` is the one loop
that drives them (and the onnxruntime/TensorRT stage calls, runtime/stages.py), bounded by
`max_new_tokens` and an optional `time.monotonic()` deadline; `generate` binds it to Qwen2.
`generate_no_cache` is the slow oracle: it re-runs the whole sequence every step.

Official behaviour matched (spec §1.8): greedy (`do_sample=False`), positions 0..T-1 for the
prompt embeddings, decode steps embed the previous token through `embed_tokens`, stop on
`<|im_end|>`, and only the new tokens are returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .llm import Qwen2

StopReason = Literal["eos", "max_new_tokens", "deadline"]


@dataclass
class GenerationResult:
    """What one `generate` call produced.

    `token_ids` are the new tokens only, without the eos token (`stopped == "eos"` says one was
    produced). `step_logits`, when requested, holds the logits [N, V] behind every decision,
    including the one that chose eos, so N = len(token_ids) + (stopped == "eos").
    """

    token_ids: list[int]
    stopped: StopReason
    prefill_s: float = 0.0
    decode_s: float = 0.0
    step_logits: Tensor | None = field(default=None, repr=False)

    @property
    def stopped_on_eos(self) -> bool:
        return self.stopped == "eos"


def greedy(logits: Tensor) -> Tensor:
    """logits [B, V] -> token ids [B]; ties go to the lowest id (torch.argmax, like HF)."""
    return torch.argmax(logits, dim=-1)


def prefill(model: Qwen2, embeds: Tensor, input_pos: Tensor) -> Tensor:
    """Run the prompt embeds [B, T, C] at positions [T] through the cache -> next logits [B, V]."""
    return model(embeds, input_pos, last_only=True)[:, -1]


def decode_one_token(model: Qwen2, token: Tensor, pos: Tensor) -> Tensor:
    """One cached step: token [B, 1] at position pos [1] -> next logits [B, V]."""
    return model(model.embed(token), pos, last_only=True)[:, -1]


def _check_args(prompt_embeds: Tensor, max_new_tokens: int) -> None:
    if prompt_embeds.dim() != 2:
        raise ValueError(f"prompt_embeds must be [T, C], got {tuple(prompt_embeds.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


@torch.no_grad()
def generate(model: Qwen2, prompt_embeds: Tensor, max_new_tokens: int, eos_id: int,
             callback: Callable[[int], None] | None = None, deadline: float | None = None,
             return_logits: bool = False) -> GenerationResult:
    """Greedy decoding from spliced prompt embeddings [T, C] (batch 1).

    Allocates KV caches of exactly T + max_new_tokens. `callback(token_id)` runs for every new
    non-eos token (streaming). `deadline` is a `time.monotonic()` value checked before prefill
    and before each decode step; the prefill itself is never interrupted.
    """
    _check_args(prompt_embeds, max_new_tokens)
    device = prompt_embeds.device
    t = prompt_embeds.shape[0]

    def first() -> Tensor:
        model.setup_caches(1, t + max_new_tokens, dtype=prompt_embeds.dtype, device=device)
        return prefill(model, prompt_embeds[None], torch.arange(t, device=device))  # [1, V]

    def step(token: Tensor, pos: int) -> Tensor:
        return decode_one_token(model, token.view(1, 1), torch.tensor([pos], device=device))

    return greedy_loop(first, step, t, max_new_tokens, eos_id, callback, deadline,
                       return_logits)


def greedy_loop(first: Callable[[], Tensor], step: Callable[[Tensor, int], Tensor],
                prompt_len: int, max_new_tokens: int, eos_id: int,
                callback: Callable[[int], None] | None = None, deadline: float | None = None,
                return_logits: bool = False) -> GenerationResult:
    """The one greedy loop behind every backend (torch here, onnxruntime/TensorRT in runtime/).

    `first()` runs the prefill -> logits [1, V]; `step(token [1], pos)` feeds the previous token
    at position `pos` -> logits [1, V]. Stops on eos, `max_new_tokens` or the deadline.
    """
    if _past(deadline):
        return GenerationResult([], "deadline")
    start = time.perf_counter()
    logits = first()  # [1, V]
    token = greedy(logits)  # [1]
    tid = int(token)  # also synchronises the device, so the timing below is honest
    prefill_s = time.perf_counter() - start

    start = time.perf_counter()
    tokens: list[int] = []
    all_logits = [logits[0].float().cpu()] if return_logits else []
    stopped: StopReason = "max_new_tokens"
    pos = prompt_len
    while True:
        if tid == eos_id:
            stopped = "eos"
            break
        tokens.append(tid)
        if callback is not None:
            callback(tid)
        if len(tokens) >= max_new_tokens:
            break
        if _past(deadline):
            stopped = "deadline"
            break
        logits = step(token, pos)
        token = greedy(logits)
        tid = int(token)
        pos += 1
        if return_logits:
            all_logits.append(logits[0].float().cpu())
    decode_s = time.perf_counter() - start
    step_logits = torch.stack(all_logits) if return_logits else None
    return GenerationResult(tokens, stopped, prefill_s, decode_s, step_logits)


@torch.no_grad()
def generate_no_cache(model: Qwen2, prompt_embeds: Tensor, max_new_tokens: int, eos_id: int,
                      return_logits: bool = False) -> GenerationResult:
    """Slow oracle for `generate`: recompute the full sequence for every new token."""
    _check_args(prompt_embeds, max_new_tokens)
    seq = prompt_embeds[None]  # [1, T, C], grows by one row per step
    tokens: list[int] = []
    all_logits: list[Tensor] = []
    stopped: StopReason = "max_new_tokens"
    start = time.perf_counter()
    while len(tokens) < max_new_tokens:
        logits = model.forward_no_cache(seq, last_only=True)[:, -1]  # [1, V]
        if return_logits:
            all_logits.append(logits[0].float().cpu())
        token = greedy(logits)  # [1]
        if int(token) == eos_id:
            stopped = "eos"
            break
        tokens.append(int(token))
        seq = torch.cat((seq, model.embed(token.view(1, 1))), dim=1)
    step_logits = torch.stack(all_logits) if return_logits else None
    return GenerationResult(tokens, stopped, 0.0, time.perf_counter() - start, step_logits)
