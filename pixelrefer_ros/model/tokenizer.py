"""Qwen2 text tokenizer on the `tokenizers` library (no transformers).

A checkpoint may carry a `tokenizer.json` (fast format) or only the slow-tokenizer files
`vocab.json` + `merges.txt` with the added tokens in `added_tokens.json` and/or
`tokenizer_config.json` (`added_tokens_decoder`): the official loader opens the tokenizer with
`use_fast=False` (spec §8). For the second layout we rebuild the same byte-level BPE pipeline
that HF's Qwen2 converter produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .config import IM_END_TOKEN, REGION_TOKEN

# Qwen2's pre-tokenizer split pattern (tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TextTokenizer:
    """Text <-> ids for the PixelRefer LLM. Never adds a BOS (Qwen2 has none)."""

    def __init__(self, tokenizer: Tokenizer, eos_token: str = IM_END_TOKEN) -> None:
        self._tok = tokenizer
        self._eos_token = eos_token

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def from_dir(cls, ckpt_dir: str | Path) -> TextTokenizer:
        """Load a checkpoint folder: tokenizer.json if present, else vocab.json + merges.txt."""
        ckpt_dir = Path(ckpt_dir)
        config = _read_json(ckpt_dir / "tokenizer_config.json") or {}
        eos = _token_content(config.get("eos_token")) or IM_END_TOKEN
        if (ckpt_dir / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(ckpt_dir / "tokenizer.json")), eos)
        vocab_path, merges_path = ckpt_dir / "vocab.json", ckpt_dir / "merges.txt"
        if not (vocab_path.is_file() and merges_path.is_file()):
            raise FileNotFoundError(f"{ckpt_dir} has neither tokenizer.json nor "
                                    "vocab.json + merges.txt")
        added = _added_tokens(ckpt_dir, config)
        return cls(build_qwen2_bpe(vocab_path, merges_path, added), eos)

    # ---- API -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Tokenise `text`; special tokens written in it (e.g. `<REGION>`) map to their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Ids -> text. Invalid UTF-8 byte runs become U+FFFD, like HF's errors='replace'."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int:
        """Id of one token string; ValueError if the vocabulary does not contain it."""
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ValueError(f"token {token!r} is not in the tokenizer vocabulary "
                             f"({self.vocab_size} entries); is this a PixelRefer checkpoint?")
        return tid

    @property
    def eos_id(self) -> int:
        return self.token_id(self._eos_token)

    @property
    def region_id(self) -> int:
        return self.token_id(REGION_TOKEN)

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus added tokens (= the LLM's embedding rows for Lite checkpoints)."""
        return self._tok.get_vocab_size(with_added_tokens=True)


def build_qwen2_bpe(vocab_path: Path, merges_path: Path,
                    added: list[tuple[int, AddedToken]]) -> Tokenizer:
    """The Qwen2 fast pipeline: NFC -> regex split -> byte-level BPE; byte-level decoder.

    `added` lists (expected id, token). Added tokens take the next free ids in the order given,
    so we add them sorted by id and verify that every one landed on its expected id.
    """
    vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges: list[tuple[str, str]] = []
    for i, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines()):
        line = line.strip()
        if not line or (i == 0 and line.startswith("#version")):
            continue
        left, right = line.split(" ")  # byte-level symbols never contain a space (it is 'Ġ')
        merges.append((left, right))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()

    for expected, token in sorted(added, key=lambda item: item[0]):
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        got = tok.token_to_id(token.content)
        if got != expected:
            raise ValueError(f"added token {token.content!r} got id {got}, expected {expected}: "
                             "added tokens must be contiguous after the base vocabulary")
    return tok


def _added_tokens(ckpt_dir: Path, config: dict[str, Any]) -> list[tuple[int, AddedToken]]:
    """Added tokens from tokenizer_config.json's added_tokens_decoder, then added_tokens.json.

    The config entry carries the flags (special, lstrip, ...); tokens listed only in
    added_tokens.json are treated as special, which is how train.py adds its tokens.
    """
    found: dict[int, AddedToken] = {}
    for tid, entry in (config.get("added_tokens_decoder") or {}).items():
        found[int(tid)] = AddedToken(
            entry["content"], single_word=entry.get("single_word", False),
            lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
            normalized=entry.get("normalized", False), special=entry.get("special", True))
    for content, tid in (_read_json(ckpt_dir / "added_tokens.json") or {}).items():
        if tid not in found:
            found[tid] = AddedToken(content, normalized=False, special=True)
        elif found[tid].content != content:
            raise ValueError(f"id {tid} is {found[tid].content!r} in tokenizer_config.json but "
                             f"{content!r} in added_tokens.json")
    return list(found.items())


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _token_content(value: Any) -> str | None:
    """tokenizer_config stores a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value
