"""Load a PixelRefer-Lite checkpoint from a local directory in the official Hugging Face layout.

Strict on purpose (gpt-fast `_load_model`, nanoGPT `from_pretrained`): the modules are built on
the meta device, every checkpoint key is mapped through one explicit prefix table, and a missing,
unexpected or mis-shaped tensor stops the load with a message naming it. Never touches the
network: the files must already be on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from pixelrefer_ros.model.config import REGION_TOKEN, PixelReferConfig
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.tokenizer import TextTokenizer

# Official key prefix -> our module prefix (spec §3.3). Order matters: the first match wins.
PREFIX_MAP: list[tuple[str, str]] = [
    ("model.vision_encoder.vision_encoder.", "vision."),
    ("model.region_encoder.", "objects."),
    ("lm_head.", "llm.lm_head."),
    ("model.", "llm."),
]
# Stored in released checkpoints but unused on the Lite inference path (spec §1.4, §1.5).
IGNORED_PREFIXES = ("model.mm_projector.", "model.region_encoder.mask_embedding.")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class CheckpointError(ValueError):
    """The checkpoint directory is missing files or holds tensors that do not fit the config."""


@dataclass
class LoadedModel:
    model: PixelReferLite | None  # None for load_checkpoint(weights=False)
    tokenizer: TextTokenizer
    config: PixelReferConfig
    checkpoint_dir: Path
    checkpoint_hash: str  # sha256 over the weight files' names and sizes + config.json


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def read_config(ckpt_dir: str | Path) -> PixelReferConfig:
    """config.json (+ a local preprocessor_config.json if one exists) -> PixelReferConfig."""
    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no config.json (expected the official HF layout)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    # Released checkpoints do not carry the image-processor file (spec §8); a local copy next to
    # config.json, or under the vision-encoder id (the layout the official loader resolves), wins.
    preprocessor = None
    vision_id = str(cfg.get("mm_vision_encoder", "-"))
    for candidate in (ckpt_dir / "preprocessor_config.json",
                      ckpt_dir / vision_id / "preprocessor_config.json"):
        if candidate.is_file():
            preprocessor = json.loads(candidate.read_text())
            break
    try:
        return PixelReferConfig.from_hf_dict(cfg, preprocessor, model_id=ckpt_dir.resolve().name)
    except KeyError as exc:
        raise CheckpointError(f"{cfg_path}: missing field {exc}") from exc


def weight_files(ckpt_dir: Path) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    single = ckpt_dir / "model.safetensors"
    index = ckpt_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (ckpt_dir / s).is_file()]
        if missing:
            raise CheckpointError(f"{ckpt_dir}: shard(s) named in the index are missing: {missing}")
        return [ckpt_dir / s for s in shards]
    if list(ckpt_dir.glob("*.bin")) or list(ckpt_dir.glob("*.pt")):
        raise CheckpointError(f"{ckpt_dir}: only pickle weights found; convert them to safetensors "
                              "(pickle files can run code and are never loaded)")
    raise CheckpointError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")


def map_key(key: str) -> str | None:
    """Official key -> our parameter name; None for keys that Lite inference does not use."""
    if key.startswith(IGNORED_PREFIXES):
        return None
    for src, dst in PREFIX_MAP:
        if key.startswith(src):
            return dst + key[len(src):]
    raise CheckpointError(f"unexpected tensor {key!r}: not part of a PixelRefer-Lite checkpoint")


def checkpoint_hash(ckpt_dir: Path, files: list[Path]) -> str:
    """A cheap identity for manifests and caches: config.json bytes + weight file names/sizes."""
    h = hashlib.sha256((ckpt_dir / "config.json").read_bytes())
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_checkpoint(ckpt_dir: str | Path, dtype: str | torch.dtype | None = None,
                    device: str | torch.device = "cpu", weights: bool = True) -> LoadedModel:
    """Build the model on the meta device and load every tensor, strictly.

    dtype None keeps the checkpoint's `torch_dtype`. LayerNorm/RMSNorm run in the chosen dtype
    like the official bf16 model; pass "float32" for parity work. weights=False reads only the
    config, tokenizer and hash (engine backends carry their own weights).
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    config = read_config(ckpt_dir)
    tokenizer = TextTokenizer.from_dir(ckpt_dir)
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the embedding has "
                              f"{config.llm.vocab_size} rows")
    # The official model_init recomputes region_token_index from the tokenizer; so do we.
    config = with_token_ids(config, tokenizer)
    torch_dtype = parse_dtype(dtype or config.torch_dtype)

    files = weight_files(ckpt_dir)
    if not weights:
        return LoadedModel(model=None, tokenizer=tokenizer, config=config, checkpoint_dir=ckpt_dir,
                           checkpoint_hash=checkpoint_hash(ckpt_dir, files))
    with torch.device("meta"):
        model = PixelReferLite(config)
    expected = {name: p for name, p in model.state_dict(keep_vars=True).items()}
    if config.llm.tie_word_embeddings:
        expected.pop("llm.lm_head.weight", None)  # tied: filled from embed_tokens below

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        with handle as f:
            for key in f.keys():
                name = map_key(key)
                if name is None or (name == "llm.lm_head.weight"
                                    and config.llm.tie_word_embeddings):
                    continue
                if name not in expected:
                    raise CheckpointError(f"{path.name}: tensor {key!r} (-> {name}) has no place "
                                          "in the model built from config.json")
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    raise CheckpointError(f"{path.name}: tensor {key!r} has shape "
                                          f"{tuple(tensor.shape)}, config.json implies "
                                          f"{tuple(expected[name].shape)}")
                state[name] = tensor.to(device=device, dtype=torch_dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
        raise CheckpointError(f"{ckpt_dir}: {len(missing)} tensor(s) missing: {shown}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.materialize_buffers(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config,
                       checkpoint_dir=ckpt_dir, checkpoint_hash=checkpoint_hash(ckpt_dir, files))


def with_token_ids(config: PixelReferConfig, tokenizer: TextTokenizer) -> PixelReferConfig:
    """`config` with the `<REGION>` and end-of-turn ids of `tokenizer` (what the config file
    says is not trusted, as in the official loader)."""
    from dataclasses import replace

    region_id = tokenizer.token_id(REGION_TOKEN)
    return replace(config, region_token_id=region_id, eos_token_id=tokenizer.eos_id)
