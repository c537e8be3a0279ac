"""TextTokenizer: tokenizer.json and the slow-tokenizer layout (vocab.json + merges.txt) agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pixelrefer_ros.model.tokenizer import TextTokenizer
from tests.official_fixtures import CASE_NAMES, CASES_DIR, OFFICIAL_CKPT

MIXED_TEXT = [
    "Hello world,",
    "The robot's gripper isn't closed; it'll re-try at 12:30 (3 attempts).",
    "  leading spaces,\ttabs\n\nand\r\nnewlines   ",
    "数字 2024 年，机器人在厨房里。 日本語のテキストも。",
    "Café vs Cafe\u0301 (NFC), emoji 🤖🦾, math ∑x² ≥ 0",
    "<|im_start|>user\nWhat is <REGION><REGION> near?<|im_end|>\n<|im_start|>assistant\n",
    "[Time 0.0:<REGION>,Time 12.5:<REGION>] in the video.",
    "",
]


def fixture_prompts() -> list[str]:
    return [json.loads((CASES_DIR / f"{c}.json").read_text())["prompt"]["prompt"]
            for c in CASE_NAMES]


def write_slow_layout(src: Path, dst: Path, added_tokens_json: bool, config: bool) -> None:
    """Turn a tokenizer.json into vocab.json + merges.txt (+ the chosen added-token files)."""
    fast = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    (dst / "vocab.json").write_text(json.dumps(fast["model"]["vocab"], ensure_ascii=False),
                                    encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in fast["model"]["merges"]]
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                    encoding="utf-8")
    if added_tokens_json:
        added = {t["content"]: t["id"] for t in fast["added_tokens"]}
        (dst / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    if config:
        shutil.copy(src / "tokenizer_config.json", dst / "tokenizer_config.json")


@pytest.fixture(scope="module")
def fast() -> TextTokenizer:
    return TextTokenizer.from_dir(OFFICIAL_CKPT)


@pytest.fixture(scope="module", params=["config_only", "added_tokens_json_only", "both"])
def slow(request, tmp_path_factory) -> TextTokenizer:
    dst = tmp_path_factory.mktemp(request.param)
    write_slow_layout(OFFICIAL_CKPT, dst, added_tokens_json=request.param != "config_only",
                      config=request.param != "added_tokens_json_only")
    assert not (dst / "tokenizer.json").exists()
    return TextTokenizer.from_dir(dst)


def test_spot_check(fast):
    assert fast.encode("Hello world,") == [9707, 1879, 11]


def test_properties(fast, slow):
    for tok in (fast, slow):
        assert tok.eos_id == 151645
        assert tok.region_id == 151668
        assert tok.vocab_size == 151669
        assert tok.token_id("<|im_start|>") == 151644
        assert tok.token_id("<image>") == 151665


def test_slow_layout_gives_identical_ids(fast, slow):
    for text in fixture_prompts() + MIXED_TEXT:
        assert slow.encode(text) == fast.encode(text), text


def test_round_trip_and_skip_special(fast, slow):
    text = "<|im_start|>user\nDescribe <REGION> please.<|im_end|>"
    for tok in (fast, slow):
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special=False) == text
        assert tok.decode(ids) == "user\nDescribe  please."
        for plain in MIXED_TEXT[1:5]:
            assert tok.decode(tok.encode(plain)) == plain.replace("e\u0301", "é")  # NFC


def test_region_token_is_one_id(fast):
    ids = fast.encode("[" + "<REGION>" * 32 + "]")
    assert ids.count(fast.region_id) == 32 and len(ids) == 34


def test_unknown_token_raises(fast):
    with pytest.raises(ValueError, match="not in the tokenizer vocabulary"):
        fast.token_id("<no such token>")


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocab\.json"):
        TextTokenizer.from_dir(tmp_path)
