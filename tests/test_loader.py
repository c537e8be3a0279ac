"""Checkpoint loading: the official layout, strict key accounting, clear errors, meta counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelrefer_ros.model.checkpoint_writer import save_checkpoint, word_level_tokenizer
from pixelrefer_ros.model.config import (
    LLMConfig,
    ObjectTokenizerConfig,
    PixelReferConfig,
    VisionConfig,
    preset,
)
from pixelrefer_ros.model.loader import CheckpointError, load_checkpoint, map_key
from pixelrefer_ros.model.pixelrefer import PixelReferLite


def tiny_config(vocab: int, tied: bool = True) -> PixelReferConfig:
    return PixelReferConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2),
        objects=ObjectTokenizerConfig(vision_width=32, llm_width=48),
        llm=LLMConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied),
        torch_dtype="float32")


def write_tiny(out: Path, tied: bool = True) -> PixelReferLite:
    tok = word_level_tokenizer(["what", "is", "this", "a", "red", "square", "?"])
    torch.manual_seed(0)
    model = PixelReferLite(tiny_config(tok.get_vocab_size(), tied))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    save_checkpoint(model, tok, out)
    return model


def test_official_fixture_loads_every_key(official_ckpt: Path) -> None:
    loaded = load_checkpoint(official_ckpt, "float32")
    stored = load_file(str(official_ckpt / "model.safetensors"))
    state = loaded.model.state_dict()
    used = 0
    for key, value in stored.items():
        name = map_key(key)
        if name is None:
            assert key.startswith(("model.mm_projector.", "model.region_encoder.mask_embedding."))
            continue
        used += 1
        assert torch.equal(state[name], value), key
    # every parameter came from the file (the tied head shares embed_tokens' storage)
    assert used == len(state) - 1
    assert loaded.model.llm.lm_head.weight is loaded.model.llm.embed_tokens.weight
    assert loaded.config.region_token_id == 151668 and loaded.config.eos_token_id == 151645
    assert loaded.config.llm.vocab_size == 151669 and loaded.config.vision.hidden_size == 64


@pytest.mark.parametrize("tied", [True, False])
def test_written_checkpoint_round_trips(tmp_path: Path, tied: bool) -> None:
    model = write_tiny(tmp_path / "ckpt", tied)
    loaded = load_checkpoint(tmp_path / "ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert (loaded.model.llm.lm_head.weight is loaded.model.llm.embed_tokens.weight) == tied


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_loads_in_requested_dtype(tmp_path: Path, dtype: str) -> None:
    write_tiny(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}


def test_sharded_checkpoint(tmp_path: Path) -> None:
    write_tiny(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / "ckpt" / name))
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    index = {"weight_map": {k: n for n, part in shards.items() for k in part}}
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    reference = load_checkpoint(tmp_path / "ckpt")
    assert reference.model.llm.norm.weight.shape == (48,)


def _break(tmp_path: Path, edit) -> Path:
    ckpt = tmp_path / "ckpt"
    write_tiny(ckpt)
    edit(ckpt)
    return ckpt


def _drop_tensor(ckpt: Path, key: str) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    del state[key]
    save_file(state, str(ckpt / "model.safetensors"))


def _reshape_tensor(ckpt: Path, key: str) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    state[key] = state[key][:-1].clone()
    save_file(state, str(ckpt / "model.safetensors"))


def _add_tensor(ckpt: Path, key: str) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    state[key] = torch.zeros(3)
    save_file(state, str(ckpt / "model.safetensors"))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: _drop_tensor(c, "model.norm.weight"), "missing: llm.norm.weight"),
    (lambda c: _drop_tensor(c, "model.region_encoder.pos_linear.weight"), "objects.pos_linear"),
    (lambda c: _reshape_tensor(c, "model.layers.0.mlp.up_proj.weight"), "has shape (95, 48)"),
    (lambda c: _add_tensor(c, "model.bogus.weight"), "no place"),
    (lambda c: _add_tensor(c, "extra_head.weight"), "unexpected tensor 'extra_head.weight'"),
    (lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 64), "not a readable"),
    (lambda c: (c / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda c: (c / "config.json").write_text("{"), "not valid JSON"),
    (lambda c: (c / "config.json").unlink(), "no config.json"),
    (lambda c: (c / "tokenizer.json").unlink(), "tokenizer"),
])
def test_malformed_checkpoints_fail_clearly(tmp_path: Path, edit, message: str) -> None:
    ckpt = _break(tmp_path, edit)
    with pytest.raises((CheckpointError, ValueError, FileNotFoundError)) as info:
        load_checkpoint(ckpt)
    assert message in str(info.value)


def test_wrong_model_type_is_refused(tmp_path: Path) -> None:
    def edit(c: Path) -> None:
        cfg = json.loads((c / "config.json").read_text())
        cfg["model_type"] = "qwen2"
        (c / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type"):
        load_checkpoint(_break(tmp_path, edit))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_vocab_merges_only_checkpoint_loads(official_ckpt: Path, tmp_path: Path) -> None:
    """Released checkpoints may carry vocab.json + merges.txt instead of tokenizer.json."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(official_ckpt, ckpt, ignore=shutil.ignore_patterns("DAMO-NLP-SG"))
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    (ckpt / "vocab.json").write_text(json.dumps(tj["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    (ckpt / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (ckpt / "tokenizer.json").unlink()
    loaded = load_checkpoint(ckpt, "float32")
    assert loaded.config.region_token_id == 151668
    assert loaded.tokenizer.encode("Hello world,") == [9707, 1879, 11]


OFFICIAL_TOTALS = {"2b": 1.97e9, "7b": 8.07e9}  # spec §3.3, including mm_projector
REGION_ENCODER = {"2b": 14_768_256, "7b": 27_617_408}  # spec §3.3, exact


@pytest.mark.parametrize("name", ["2b", "7b"])
def test_released_shapes_parameter_count_on_meta(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):
        model = PixelReferLite(cfg)
    ours = sum(p.numel() for p in model.parameters())  # tied head counted once
    vit = sum(p.numel() for p in model.vision.parameters())
    assert vit == 412_147_440  # spec §3.3, exact
    region = sum(p.numel() for p in model.objects.parameters())
    assert region + 2 * cfg.vision.hidden_size == REGION_ENCODER[name]  # + unused mask_embedding
    h, c = cfg.llm.hidden_size, cfg.vision.hidden_size
    projector = c * h + h + h * h + h  # built and stored officially, unused by Lite
    mask_embedding = c + c  # Conv2d(1 -> C, k=1): weight + bias, unused
    total = ours + projector + mask_embedding
    assert abs(total - OFFICIAL_TOTALS[name]) / OFFICIAL_TOTALS[name] < 0.005, total


def test_mask_num_sets_the_region_tokens_per_object_end_to_end(tmp_path: Path) -> None:
    """config.json's `mask_num` (32 in every released checkpoint, 8 in the built-in shapes
    model) sets how many tokens SAOT pools and how many `<REGION>` slots a prompt gets."""
    from pixelrefer_ros.model.config import REGION_TOKEN
    from pixelrefer_ros.model.pipeline import RegionPipeline

    tok = word_level_tokenizer(["what", "is", "this", "Time", ":", ",", "[", "]", "0", "."])
    cfg = tiny_config(tok.get_vocab_size())
    cfg = PixelReferConfig(vision=cfg.vision, llm=cfg.llm, torch_dtype="float32",
                           objects=ObjectTokenizerConfig(vision_width=32, llm_width=48,
                                                         tokens_per_object=8),
                           region_token_id=tok.token_to_id(REGION_TOKEN))
    torch.manual_seed(0)
    save_checkpoint(PixelReferLite(cfg), tok, tmp_path / "k8")
    assert json.loads((tmp_path / "k8" / "config.json").read_text())["mask_num"] == 8
    pipe = RegionPipeline(load_checkpoint(tmp_path / "k8", "float32"))
    image = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:40, 20:50] = 1
    tokens = pipe.object_tokens(image, mask, pipe.global_features(image))
    assert tokens.shape == (8, 48)
    image_answer = pipe.answer("what is <region>", [tokens], max_new_tokens=1)
    video_answer = pipe.answer("what is <region>", [torch.cat([tokens, tokens])],
                               [[0.0, 0.5]], max_new_tokens=1)
    assert image_answer.prompt.count(REGION_TOKEN) == 8
    assert video_answer.prompt.count(REGION_TOKEN) == 16
