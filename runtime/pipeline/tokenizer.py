"""Tokenizer stage: texts -> unpadded token id arrays, truncated at the model's max_length.

Uses the model directory's fast `tokenizer.json` through `tokenizers`, whose batch encoding
runs in parallel in Rust. Arrays are int32 until a batch is assembled, to keep a large
look-ahead window small in memory.

The work per text is bounded before tokenizing: truncation needs only a prefix, so a text
is cut at a whitespace after max_length x 16 characters, and only if that prefix gives too
few tokens is a longer one (x4, up to max_length x 256 characters) tried. The pre-tokenizer
splits at whitespace, so the tokens kept equal those of the whole text (tested on both
vocabularies); a 50 MB line costs a few kB of tokenizer work instead of gigabytes. Chunked
long texts are tokenized the same way, one bounded segment at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from albert_onnx.errors import InputError, InputTypeError

PREFIX_CHARS_PER_TOKEN = 16  # English averages 4-5 characters per token
MAX_CHARS_PER_TOKEN = 256  # past this a text is cut even if it has not filled max_length
SEGMENTS_PER_CALL = 64  # segments of a chunked long text tokenized together
WHITESPACE = " \n\t\r\u3000"
METASPACE = "\u2581"  # SentencePiece's bare word-boundary piece carries no meaning of its own


def lone_surrogate(text: str) -> int | None:
    """Position of the first lone UTF-16 surrogate in TEXT (valid JSON, not valid Unicode)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_texts(texts: Sequence[object], first_index: int = 0, name: str = "texts") -> None:
    """Refuse what is not a string, or not encodable text, naming its index in the input."""
    for i, text in enumerate(texts, start=first_index):
        if not isinstance(text, str):
            raise InputTypeError(f"{name}[{i}] is {type(text).__name__}, not a string")
        position = lone_surrogate(text)
        if position is not None:
            raise InputError(f"{name}[{i}] has a lone surrogate at character {position}")


@dataclass(frozen=True)
class Encoded:
    """One tokenized text (or one window of a long text), without padding."""

    ids: np.ndarray
    type_ids: np.ndarray
    truncated: bool = False
    mostly_unknown: bool = False  # the vocabulary does not cover this text's script

    def __len__(self) -> int:
        return len(self.ids)


def _prefix(text: str, limit: int) -> str:
    """TEXT cut before the last whitespace in its LIMIT-long head (at LIMIT if none)."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(c, limit // 2, limit) for c in WHITESPACE)
    return text[: cut if cut > 0 else limit]


def _segments(text: str, size: int) -> Iterator[str]:
    """TEXT in pieces of at most SIZE characters, cut at whitespace, whitespace dropped."""
    start = 0
    while start < len(text):
        piece = _prefix(text[start : start + size + 1], size)
        yield piece
        start += len(piece)
        while start < len(text) and text[start] in WHITESPACE:
            start += 1


class TextTokenizer:
    """The model's tokenizer with truncation set, padding off (the bucketer pads).

    With OVERLAP > 0, `encode_windows` cuts long texts into overlapping windows of
    max_length tokens (each with its own [CLS]/[SEP]) instead of truncating them.
    """

    def __init__(self, path: str | Path, max_length: int, overlap: int = 0) -> None:
        self.max_length = max_length
        self.overlap = overlap
        self._path = str(path)
        self._tokenizer = Tokenizer.from_file(self._path)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        specials = self._tokenizer.encode("").ids
        self._head, self._tail = specials[:1], specials[1:]
        self._unknown, self._ignored = self._unknown_ids()

    def _unknown_ids(self) -> tuple[int | None, np.ndarray]:
        """The unknown token's id, and the ids that say nothing about coverage."""
        model = json.loads(self._tokenizer.to_str())["model"]
        unknown = model.get("unk_id")
        if unknown is None and model.get("unk_token"):
            unknown = self._tokenizer.token_to_id(model["unk_token"])
        added = self._tokenizer.get_added_tokens_decoder()
        ignored = [i for i, token in added.items() if token.special and i != unknown]
        if self._tokenizer.token_to_id(METASPACE) is not None:
            ignored.append(self._tokenizer.token_to_id(METASPACE))
        return unknown, np.array(ignored, dtype=np.int32)

    def _mostly_unknown(self, ids: np.ndarray) -> bool:
        """More than half of the text's meaningful tokens are the unknown token."""
        if self._unknown is None:
            return False
        content = np.count_nonzero(~np.isin(ids, self._ignored))
        return bool(content) and bool(np.count_nonzero(ids == self._unknown) * 2 > content)

    @cached_property
    def _plain(self) -> Tokenizer:
        """A second instance without truncation, for chunking: settings belong to an
        instance, and toggling them would race with other threads tokenizing."""
        plain = Tokenizer.from_file(self._path)
        plain.no_padding()
        return plain

    @property
    def _prefix_chars(self) -> int:
        return self.max_length * PREFIX_CHARS_PER_TOKEN

    def encode(self, texts: list[str]) -> list[Encoded]:
        """One truncated encoding per text, each from a bounded prefix of the text."""
        result: list[Encoded | None] = [None] * len(texts)
        pending, limit = list(range(len(texts))), self._prefix_chars
        longest = self.max_length * MAX_CHARS_PER_TOKEN
        while pending:
            heads = [_prefix(texts[i], limit) for i in pending]
            retry = []
            for i, head, encoding in zip(
                pending, heads, self._tokenizer.encode_batch(heads), strict=True
            ):
                cut = len(head) < len(texts[i])
                if cut and not encoding.overflowing and limit < longest:
                    retry.append(i)  # too few tokens in this prefix to fill max_length
                else:
                    result[i] = self._from_encoding(encoding, bool(encoding.overflowing) or cut)
            pending, limit = retry, min(limit * 4, longest)
        return result  # type: ignore[return-value]

    def _from_encoding(self, encoding: Encoding, truncated: bool) -> Encoded:
        ids = np.asarray(encoding.ids, dtype=np.int32)
        type_ids = np.asarray(encoding.type_ids, dtype=np.int32)
        return Encoded(ids, type_ids, truncated, self._mostly_unknown(ids))

    def encode_windows(self, texts: list[str]) -> list[list[Encoded]]:
        """All overlapping windows of each text (one window for short texts)."""
        short = [i for i, text in enumerate(texts) if len(text) <= self._prefix_chars]
        encodings = self._plain.encode_batch([texts[i] for i in short], add_special_tokens=False)
        content = {
            i: np.asarray(e.ids, dtype=np.int32) for i, e in zip(short, encodings, strict=True)
        }
        return [
            self._windows(content[i] if i in content else self._content_ids(text))
            for i, text in enumerate(texts)
        ]

    def _content_ids(self, text: str) -> np.ndarray:
        """TEXT's token ids without special tokens, tokenized one bounded segment at a time."""
        segments, parts = _segments(text, self._prefix_chars), []
        while group := list(islice(segments, SEGMENTS_PER_CALL)):
            encodings = self._plain.encode_batch(group, add_special_tokens=False)
            parts.extend(np.asarray(e.ids, dtype=np.int32) for e in encodings)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def _windows(self, content: np.ndarray) -> list[Encoded]:
        """Windows of max_length tokens with OVERLAP shared, as tokenizers' stride cuts them."""
        span = self.max_length - len(self._head) - len(self._tail)
        step = span - self.overlap
        unknown = self._mostly_unknown(content)
        windows, start = [], 0
        while True:
            ids = np.concatenate([self._head, content[start : start + span], self._tail])
            windows.append(
                Encoded(ids.astype(np.int32), np.zeros_like(ids, np.int32), False, unknown)
            )
            if start + span >= len(content):
                return windows
            start += step
