"""Write a model in the official PixelRefer-Lite Hugging Face layout, and build small tokenizers.

Used for the built-in shapes model and for tests that need a checkpoint of their own: what this
writes must load through the ordinary `load_checkpoint`, exactly like a released checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from pixelrefer_ros.model.config import (
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMAGE_TOKEN,
    REGION_TOKEN,
    STREAM_END_TOKEN,
    STREAM_START_TOKEN,
    PixelReferConfig,
)
from pixelrefer_ros.model.loader import PREFIX_MAP
from pixelrefer_ros.model.pixelrefer import PixelReferLite

# The chat specials first (Qwen order for the three that matter), then the tokens train.py adds.
CHAT_SPECIALS = ["<|endoftext|>", IM_START_TOKEN, IM_END_TOKEN]
ADDED_SPECIALS = [IMAGE_TOKEN, STREAM_START_TOKEN, STREAM_END_TOKEN, REGION_TOKEN]


def word_level_tokenizer(words: list[str]) -> Tokenizer:
    """A word-level tokenizer with the chat specials: words and punctuation are single tokens.

    Text is split on whitespace and punctuation, so "left?" -> ["left", "?"]. Unknown words map
    to "[UNK]". The decoder joins words with spaces (punctuation spacing is cosmetic here).
    """
    vocab = {"[UNK]": 0}
    for w in ["\n", *sorted(set(words))]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    # Keep "\n" as a token (the chat template has newlines), split the rest on spaces/punctuation.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in CHAT_SPECIALS + ADDED_SPECIALS])
    return tok


def hf_config(config: PixelReferConfig, model_type: str = "pixelreferlite_qwen2") -> dict:
    """PixelReferConfig -> an official-style config.json dict (inverse of from_hf_dict)."""
    llm, vis = config.llm, config.vision
    return {
        "architectures": ["PixelreferliteQwen2ForCausalLM"],
        "model_type": model_type,
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": llm.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": llm.max_position_embeddings,
        "tie_word_embeddings": llm.tie_word_embeddings,
        "hidden_act": "silu",
        "eos_token_id": config.eos_token_id,
        "mm_vision_encoder": "DAMO-NLP-SG/VL3-SigLIP-NaViT",
        "mm_hidden_size": vis.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mask_num": config.objects.tokens_per_object,
        "mm_max_length": config.preprocess.mm_max_length,
        "spatial_merge_size": config.preprocess.spatial_merge_size,
        "use_token_compression": True,
        "region_token_index": config.region_token_id,
        "torch_dtype": config.torch_dtype,
        "vision_encoder_config": {
            "model_type": "damovl", "hidden_size": vis.hidden_size,
            "intermediate_size": vis.intermediate_size,
            "num_hidden_layers": vis.num_hidden_layers,
            "num_attention_heads": vis.num_attention_heads,
            "layer_norm_eps": vis.layer_norm_eps, "patch_size": vis.patch_size,
            "num_channels": vis.num_channels, "hidden_act": "gelu_pytorch_tanh",
        },
    }


def official_state_dict(model: PixelReferLite) -> dict[str, torch.Tensor]:
    """Our parameter names -> official keys (PREFIX_MAP reversed); the tied head is not stored."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "llm.lm_head.weight" and model.config.llm.tie_word_embeddings:
            continue
        for src, dst in PREFIX_MAP:
            if name.startswith(dst):
                out[src + name[len(dst):]] = tensor.detach().contiguous().clone()
                break
        else:
            raise KeyError(f"parameter {name} has no official prefix")
    return out


def save_checkpoint(model: PixelReferLite, tokenizer: Tokenizer, out_dir: str | Path,
                    extra_config: dict | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(model.config) | (extra_config or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(official_state_dict(model), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": IM_END_TOKEN, "pad_token": "<|endoftext|>", "padding_side": "right",
        "model_max_length": model.config.llm.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": model.config.eos_token_id, "do_sample": False}, indent=2) + "\n")
    return out
