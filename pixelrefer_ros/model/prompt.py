"""Prompt construction and region splicing (spec §1.7; fixtures README §5.1).

The user writes one literal `<region>` per object. Each becomes a block of `<REGION>` tokens
(32 per object per frame) whose embeddings are later overwritten by that object's features.
The strings built here must equal the official ones character for character, because the
tokenizer, and so every position in the LLM, depends on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import IM_END_TOKEN, IM_START_TOKEN, REGION_TOKEN

REGION_PLACEHOLDER = "<region>"  # what users write; distinct (case) from the REGION_TOKEN
TOKENS_PER_REGION = 32  # config `mask_num`

# DLC-style defaults (the fixture cases were run with exactly these strings).
DEFAULT_PROMPT_IMAGE = "Please describe the region <region> in the image in detail."
DEFAULT_PROMPT_VIDEO = "Please describe <region> in the video."


def relation_prompt(num_objects: int = 2) -> str:
    """Default question about how objects relate, e.g. for 2:
    "What is the relationship between <region> and <region>?"."""
    if num_objects < 2:
        raise ValueError(f"a relation question needs at least 2 objects, got {num_objects}")
    regions = [REGION_PLACEHOLDER] * num_objects
    return f"What is the relationship between {', '.join(regions[:-1])} and {regions[-1]}?"


def count_regions(text: str) -> int:
    """Number of `<region>` placeholders in `text`."""
    return text.count(REGION_PLACEHOLDER)


def check_region_count(text: str, num_objects: int) -> None:
    """Raise ValueError unless `text` has exactly one `<region>` per object."""
    found = count_regions(text)
    if found != num_objects:
        raise ValueError(f"the prompt has {found} {REGION_PLACEHOLDER} placeholder(s) but "
                         f"{num_objects} object(s) were given; write one {REGION_PLACEHOLDER} "
                         f"per object, in object order: {text!r}")


def expand_regions_image(text: str, num_regions: int,
                         tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """Replace the k-th `<region>` with "[" + "<REGION>"*32 + "]" (official image path)."""
    check_region_count(text, num_regions)
    block = "[" + REGION_TOKEN * tokens_per_region + "]"
    for _ in range(num_regions):
        text = text.replace(REGION_PLACEHOLDER, block, 1)
    return text


def region_timestamp_block(timestamps: Sequence[float],
                           tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """"[Time 0.0:<REGION>x32,Time 0.5:<REGION>x32,...]" for one object (generate_region_timestamp).

    Times print as `str(round(t, 1))` of a float (official timestamps are floats, so 1 -> "1.0");
    there is no "s" suffix.
    """
    if not timestamps:
        raise ValueError("an object needs at least one masked frame (timestamp)")
    entries = [f"Time {round(float(t), 1)}:" + REGION_TOKEN * tokens_per_region
               for t in timestamps]
    return "[" + ",".join(entries) + "]"


def expand_regions_video(text: str, timestamps_per_object: Sequence[Sequence[float]],
                         tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """Replace the k-th `<region>` with object k's timestamped block (official video path).

    `timestamps_per_object[k]` lists the times of the frames where object k has a mask, in the
    same order as its features (object-major, then frame order).
    """
    check_region_count(text, len(timestamps_per_object))
    for times in timestamps_per_object:
        text = text.replace(REGION_PLACEHOLDER,
                            region_timestamp_block(times, tokens_per_region), 1)
    return text


def chat_prompt(text: str) -> str:
    """Wrap one user turn in the official template: stripped text, no system prompt."""
    return f"{IM_START_TOKEN}user\n{text.strip()}{IM_END_TOKEN}\n{IM_START_TOKEN}assistant\n"


def image_prompt(instruct: str, num_regions: int,
                 tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """Full prompt string for an image question with `num_regions` objects."""
    return chat_prompt(expand_regions_image(instruct, num_regions, tokens_per_region))


def video_prompt(instruct: str, timestamps_per_object: Sequence[Sequence[float]],
                 tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """Full prompt string for a video question; one timestamp list per object."""
    return chat_prompt(expand_regions_video(instruct, timestamps_per_object, tokens_per_region))


def splice_regions(embeds: torch.Tensor, ids: torch.Tensor, region_id: int,
                   feats: torch.Tensor) -> torch.Tensor:
    """Overwrite the `<REGION>` rows of embeds [T, C] with feats [R, C], in order.

    R must equal the number of region tokens (32 per object per frame): a mismatch means the
    prompt and the object features disagree, which the official code would only catch as an
    indexing error.
    """
    if embeds.dim() != 2 or ids.shape != embeds.shape[:1]:
        raise ValueError(f"expected embeds [T, C] and ids [T], got {tuple(embeds.shape)} and "
                         f"{tuple(ids.shape)}")
    sel = ids == region_id  # [T] bool
    n_slots = int(sel.sum())
    if feats.dim() != 2 or feats.shape[0] != n_slots or feats.shape[1] != embeds.shape[1]:
        raise ValueError(f"the prompt has {n_slots} region tokens (id {region_id}) of width "
                         f"{embeds.shape[1]}, but the object features have shape "
                         f"{tuple(feats.shape)}; expected [{n_slots}, {embeds.shape[1]}]")
    out = embeds.clone()
    out[sel] = feats.to(dtype=embeds.dtype, device=embeds.device)
    return out
