"""A tiny random-weight PixelRefer-Lite checkpoint for tests that need a model, not a good one.

Written through the ordinary `save_checkpoint`, so the node loads it exactly like a released
checkpoint. Vision 32 wide / 1 layer, LLM 32 wide / 1 layer, word-level tokenizer over the shapes
vocabulary: a describe call takes a few milliseconds of LLM time on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixelrefer_ros.model.checkpoint_writer import save_checkpoint, word_level_tokenizer
from pixelrefer_ros.model.config import (
    IM_END_TOKEN,
    REGION_TOKEN,
    LLMConfig,
    ObjectTokenizerConfig,
    PixelReferConfig,
    VisionConfig,
)
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.prompt import DEFAULT_PROMPT_IMAGE, DEFAULT_PROMPT_VIDEO
from pixelrefer_ros.synthetic import VOCABULARY

# Words of the default prompts and the video "Time t:" blocks, on top of the shapes vocabulary.
EXTRA_WORDS = [*DEFAULT_PROMPT_IMAGE.split(), *DEFAULT_PROMPT_VIDEO.split(), "relationship",
               "between", "and", "Time", ":", ",", "[", "]", *"0123456789", "Describe", "What"]


def write_tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """Write (once) and return a checkpoint directory; reused when it already exists."""
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    tok = word_level_tokenizer([*VOCABULARY, *EXTRA_WORDS])
    config = PixelReferConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2),
        objects=ObjectTokenizerConfig(vision_width=32, llm_width=32, oci_heads=2),
        llm=LLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        region_token_id=tok.token_to_id(REGION_TOKEN), eos_token_id=tok.token_to_id(IM_END_TOKEN),
        torch_dtype="float32", model_id=out_dir.name)
    torch.manual_seed(seed)
    model = PixelReferLite(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    save_checkpoint(model, tok, tmp)
    tmp.rename(out_dir)  # atomic: a concurrent reader never sees half a checkpoint
    return out_dir
