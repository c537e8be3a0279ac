"""Stages 5-6 against the official fixtures: prompt string, token ids, splice, logits, greedy ids.

Each stage is fed the fixture's own inputs (e.g. `obj.mask_feats` for the splice), so a tiny
upstream difference cannot propagate. Tolerances from the fixtures README §7.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pixelrefer_ros.model.config import PixelReferConfig
from pixelrefer_ros.model.generate import generate, generate_no_cache
from pixelrefer_ros.model.llm import Qwen2
from pixelrefer_ros.model.prompt import image_prompt, splice_regions, video_prompt
from pixelrefer_ros.model.tokenizer import TextTokenizer
from tests.official_fixtures import CASE_NAMES, OFFICIAL_CKPT, load_case

NON_LLM_PREFIXES = ("model.vision_encoder.", "model.region_encoder.", "model.mm_projector.")


def load_official_llm() -> Qwen2:
    """Build the tiny Qwen2 from the official checkpoint: strip `model.`, drop non-LLM keys, tie."""
    hf = json.loads((OFFICIAL_CKPT / "config.json").read_text())
    cfg = PixelReferConfig.from_hf_dict(hf).llm
    raw = load_file(str(OFFICIAL_CKPT / "model.safetensors"))
    state = {k.removeprefix("model."): v for k, v in raw.items()
             if not k.startswith(NON_LLM_PREFIXES)}
    assert cfg.tie_word_embeddings and "lm_head.weight" not in state
    state["lm_head.weight"] = state["embed_tokens.weight"]
    model = Qwen2(cfg)
    model.load_state_dict(state, strict=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    return model.eval()


@pytest.fixture(scope="module")
def llm() -> Qwen2:
    return load_official_llm()


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(OFFICIAL_CKPT)


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request) -> tuple[str, dict, dict]:
    tensors, meta = load_case(request.param)
    return request.param, tensors, meta


def build_prompt(meta: dict) -> str:
    """The prompt from the case's instruction, as mm_infer builds it."""
    if meta["modal"] == "image":
        return image_prompt(meta["instruct"], meta["num_masks"])
    times = meta["timestamps"]
    per_object = [[times[i] for i in frame_ids] for frame_ids in meta["mask_ids_raw"]]
    return video_prompt(meta["instruct"], per_object)


def spliced_embeds(llm: Qwen2, tokenizer: TextTokenizer, tensors: dict) -> torch.Tensor:
    ids = tensors["prompt.input_ids"]
    with torch.no_grad():
        embeds = llm.embed(ids[None])[0]  # [T, C]
    return splice_regions(embeds, ids, tokenizer.region_id, tensors["obj.mask_feats"])


def test_prompt_string(case):
    _, _, meta = case
    assert build_prompt(meta) == meta["prompt"]["prompt"]


def test_token_ids(case, tokenizer):
    _, tensors, meta = case
    ids = tokenizer.encode(meta["prompt"]["prompt"])
    assert ids == tensors["prompt.input_ids"].tolist()
    positions = [i for i, t in enumerate(ids) if t == tokenizer.region_id]
    assert positions == tensors["prompt.region_positions"].tolist()
    assert len(positions) == 32 * meta["num_masks"]


def test_splice(case, llm, tokenizer):
    name, tensors, _ = case
    embeds = spliced_embeds(llm, tokenizer, tensors)
    diff = (embeds - tensors["llm.inputs_embeds"]).abs().max().item()
    print(f"{name}: inputs_embeds max|diff| = {diff:.3g}")
    assert diff <= 1e-5


@torch.no_grad()
def test_last_logits(case, llm, tokenizer):
    name, tensors, _ = case
    embeds = spliced_embeds(llm, tokenizer, tensors)[None]  # [1, T, C]
    t = embeds.shape[1]
    expected = tensors["llm.last_logits"]
    llm.setup_caches(1, t)
    cached = llm(embeds, torch.arange(t), last_only=True)[0, -1]
    oracle = llm.forward_no_cache(embeds)[0, -1]
    d_cached = (cached - expected).abs().max().item()
    d_oracle = (oracle - expected).abs().max().item()
    print(f"{name}: last_logits max|diff| cached {d_cached:.3g}, no-cache {d_oracle:.3g}")
    assert d_cached <= 1e-4 and d_oracle <= 1e-4


def test_greedy(case, llm, tokenizer):
    name, tensors, meta = case
    embeds = spliced_embeds(llm, tokenizer, tensors)
    res = generate(llm, embeds, max_new_tokens=16, eos_id=tokenizer.eos_id, return_logits=True)
    assert res.token_ids == tensors["llm.greedy_ids"].tolist()
    assert res.stopped == "max_new_tokens"
    assert not meta["llm"]["stopped_on_eos"]
    # Top-2 logits at every step (the fixture's decision margins).
    top2 = res.step_logits.topk(2, dim=-1)
    assert torch.equal(top2.indices, tensors["llm.step_top2_ids"])
    diff = (top2.values - tensors["llm.step_top2_logits"]).abs().max().item()
    print(f"{name}: step top-2 logits max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    text = tokenizer.decode(res.token_ids, skip_special=True).strip()
    assert text == meta["llm"]["mm_infer_output"]
    assert tokenizer.decode(res.token_ids, skip_special=False) == meta["llm"]["decoded_raw"]


def test_greedy_no_cache_oracle(case, llm, tokenizer):
    _, tensors, _ = case
    embeds = spliced_embeds(llm, tokenizer, tensors)
    res = generate_no_cache(llm, embeds, max_new_tokens=16, eos_id=tokenizer.eos_id)
    assert res.token_ids == tensors["llm.greedy_ids"].tolist()
