"""Prompt building and region splicing (spec §1.7); fixture strings are checked in
test_parity_llm.py, these cover formats and errors."""

from __future__ import annotations

import pytest
import torch

from pixelrefer_ros.model.prompt import (
    DEFAULT_PROMPT_IMAGE,
    DEFAULT_PROMPT_VIDEO,
    chat_prompt,
    count_regions,
    expand_regions_image,
    expand_regions_video,
    region_timestamp_block,
    relation_prompt,
    splice_regions,
)

R = "<REGION>"


def test_image_expansion_in_order():
    text = expand_regions_image("A <region> and B <region>.", 2, tokens_per_region=3)
    assert text == f"A [{R * 3}] and B [{R * 3}]."


def test_video_expansion_format():
    text = expand_regions_video("Where is <region> vs <region>?", [[0.0, 0.5, 12.34], [1]],
                                tokens_per_region=2)
    assert text == (f"Where is [Time 0.0:{R * 2},Time 0.5:{R * 2},Time 12.3:{R * 2}] "
                    f"vs [Time 1.0:{R * 2}]?")
    assert region_timestamp_block([2.25]) == f"[Time {round(2.25, 1)}:{R * 32}]"


def test_region_count_mismatch_raises():
    with pytest.raises(ValueError, match="1 <region> placeholder"):
        expand_regions_image(DEFAULT_PROMPT_IMAGE, 2)
    with pytest.raises(ValueError, match="2 object"):
        expand_regions_video(DEFAULT_PROMPT_VIDEO, [[0.0], [1.0]])
    with pytest.raises(ValueError, match="at least one masked frame"):
        expand_regions_video(DEFAULT_PROMPT_VIDEO, [[]])


def test_chat_prompt_strips_and_has_no_system_turn():
    assert chat_prompt("  hi there \n") == (
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")


def test_default_prompts():
    assert count_regions(DEFAULT_PROMPT_IMAGE) == 1 and count_regions(DEFAULT_PROMPT_VIDEO) == 1
    assert relation_prompt() == "What is the relationship between <region> and <region>?"
    assert relation_prompt(3) == ("What is the relationship between <region>, <region> and "
                                  "<region>?")
    with pytest.raises(ValueError):
        relation_prompt(1)


def test_splice_overwrites_region_rows_in_order():
    ids = torch.tensor([5, 9, 9, 6, 9])
    embeds = torch.zeros(5, 3)
    feats = torch.arange(9, dtype=torch.float32).view(3, 3)
    out = splice_regions(embeds, ids, 9, feats)
    assert torch.equal(out[[1, 2, 4]], feats)
    assert torch.equal(out[[0, 3]], embeds[[0, 3]])
    assert torch.count_nonzero(embeds) == 0  # input left untouched


def test_splice_count_mismatch_raises():
    ids = torch.tensor([5, 9, 9])
    with pytest.raises(ValueError, match="2 region tokens"):
        splice_regions(torch.zeros(3, 4), ids, 9, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="expected \\[2, 4\\]"):
        splice_regions(torch.zeros(3, 4), ids, 9, torch.zeros(2, 5))
