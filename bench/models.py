"""Which model a bench runs: the built-in checkpoint, a random one of the same shape, or 2B.

The built-in `models/shapes` is used when it exists. Until it does, the benches fall back to a
random checkpoint of the shapes model's shape (`SMALL`, the defaults of training/train.py's
`ModelShape`), so the node benches measure a model of the size the node ships with. `--quick`
runs use `TINY`. The released 2B/7B shapes (`config.preset`) get random weights in-process:
only their cost is measured, never their text.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import REPO, RESULTS
from pixelrefer_ros.model.checkpoint_writer import save_checkpoint, word_level_tokenizer
from pixelrefer_ros.model.config import (
    IM_END_TOKEN,
    REGION_TOKEN,
    LLMConfig,
    ObjectTokenizerConfig,
    PixelReferConfig,
    VisionConfig,
    preset,
)
from pixelrefer_ros.model.loader import LoadedModel
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.prompt import DEFAULT_PROMPT_IMAGE, DEFAULT_PROMPT_VIDEO
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.training.train import ModelShape

BUILTIN = REPO / "models" / "shapes"

TINY = PixelReferConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2),
    objects=ObjectTokenizerConfig(vision_width=32, llm_width=32, oci_heads=2),
    llm=LLMConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1),
    torch_dtype="float32", model_id="random-tiny")

# The shapes model's shape (training/train.py ModelShape defaults): ViT 64 wide x 2, LLM 128
# wide x 3.
SMALL = replace(ModelShape().config(vocab_size=128), model_id="random-shapes-shaped")

# Words of the default prompts, the video "Time t:" blocks and the shapes world's answers.
WORDS = [*DEFAULT_PROMPT_IMAGE.split(), *DEFAULT_PROMPT_VIDEO.split(), "relationship", "between",
         "and", "Time", ":", ",", ".", "?", "[", "]", *"0123456789", "Describe", "What", "a",
         "small", "large", "red", "green", "blue", "yellow", "circle", "square", "triangle",
         "moving", "left", "right", "up", "down", "staying", "still", "yes", "no"]


def named_config(name: str) -> PixelReferConfig:
    """tiny | small | 2b | 7b."""
    if name == "tiny":
        return TINY
    if name == "small":
        return SMALL
    return preset(name)


def with_llm_layers(cfg: PixelReferConfig, layers: int | None) -> PixelReferConfig:
    """The same widths with fewer LLM layers: per-layer cost is identical, so a run with L of
    28 layers, scaled by 28/L, measures a 2B prefill in a fraction of the CPU time."""
    if not layers:
        return cfg
    return replace(cfg, llm=replace(cfg.llm, num_hidden_layers=layers))


def random_model(cfg: PixelReferConfig, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", seed: int = 0) -> PixelReferLite:
    """Random weights with sane scales (1/sqrt(fan_in)), so attention is not degenerate.

    Built on the meta device and materialised once, so a 2B model never exists twice in memory.
    """
    with torch.device("meta"):
        model = PixelReferLite(cfg)
    model = model.to_empty(device=device).to(dtype)
    model.materialize_buffers(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if "norm" in name or "ln" in name else 0.0)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in**-0.5, generator=gen)
    model.tie_weights()
    return model.eval()


def bench_tokenizer() -> TextTokenizer:
    return TextTokenizer(word_level_tokenizer(WORDS))


def _with_tokens(cfg: PixelReferConfig, tok: TextTokenizer, keep_vocab: bool) -> PixelReferConfig:
    """Token ids from the tokenizer; the vocabulary too unless the shape's own is kept (2B: the
    embedding and LM head keep their 151 669 rows, which is what the cost depends on)."""
    llm = cfg.llm if keep_vocab else replace(cfg.llm, vocab_size=tok.vocab_size)
    return replace(cfg, llm=llm, region_token_id=tok.token_id(REGION_TOKEN),
                   eos_token_id=tok.token_id(IM_END_TOKEN))


def random_pipeline(name: str, llm_layers: int | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> RegionPipeline:
    """A RegionPipeline over random weights of a named shape, built in-process (no files)."""
    tok = bench_tokenizer()
    cfg = _with_tokens(with_llm_layers(named_config(name), llm_layers), tok,
                       keep_vocab=name in ("2b", "7b"))
    model = random_model(cfg, dtype, device)
    loaded = LoadedModel(model=model, tokenizer=tok, config=cfg,
                         checkpoint_dir=Path(f"<random {name}>"), checkpoint_hash="random")
    return RegionPipeline(loaded)


def write_random_checkpoint(name: str, out_dir: Path | None = None) -> Path:
    """Write (once) a random checkpoint of a small shape in the official layout, for the node."""
    if name not in ("tiny", "small"):
        raise ValueError(f"only tiny/small random checkpoints are written to disk, not {name!r}")
    tok = bench_tokenizer()
    cfg = _with_tokens(named_config(name), tok, keep_vocab=False)
    tag = hashlib.sha256(repr(cfg).encode()).hexdigest()[:8]
    out = Path(out_dir) if out_dir else RESULTS / f"ckpt_random_{name}_{tag}"
    if (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    save_checkpoint(random_model(cfg), word_level_tokenizer(WORDS), tmp)
    tmp.rename(out)  # atomic: a concurrent reader never sees half a checkpoint
    return out


def resolve_model_dir(model_dir: str | None, quick: bool) -> tuple[Path, str]:
    """(checkpoint dir, what it is): --model-dir, else models/shapes, else a random one."""
    if model_dir:
        return Path(model_dir), f"checkpoint {model_dir}"
    if (BUILTIN / "config.json").is_file():
        return BUILTIN, "built-in models/shapes"
    name = "tiny" if quick else "small"
    return write_random_checkpoint(name), (f"random {name} checkpoint (models/shapes not "
                                           "there yet; same shape as the shapes model)"
                                           if name == "small" else "random tiny checkpoint")
