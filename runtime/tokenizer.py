"""Tokenizer stage: texts -> unpadded token id arrays, truncated at the model's max_length.

Uses the model directory's fast `tokenizer.json` through `tokenizers`, whose batch
encoding runs in parallel in Rust. Arrays are int32 until a batch is assembled, to keep
a large look-ahead window small in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True)
class Encoded:
    """One tokenized text (or one window of a long text), without padding."""

    ids: np.ndarray
    type_ids: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)


def _encoded(encoding: Encoding, truncated: bool) -> Encoded:
    return Encoded(
        np.asarray(encoding.ids, dtype=np.int32),
        np.asarray(encoding.type_ids, dtype=np.int32),
        truncated,
    )


class TextTokenizer:
    """The model's tokenizer with truncation set, padding off (the bucketer pads).

    With OVERLAP > 0, long texts are cut into overlapping windows of max_length tokens
    (each with its own [CLS]/[SEP]) instead of being truncated.
    """

    def __init__(self, path: str | Path, max_length: int, overlap: int = 0) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length, stride=overlap)

    def encode(self, texts: list[str]) -> list[Encoded]:
        """One truncated encoding per text."""
        return [_encoded(e, bool(e.overflowing)) for e in self._tokenizer.encode_batch(texts)]

    def encode_windows(self, texts: list[str]) -> list[list[Encoded]]:
        """All overlapping windows of each text (one window for short texts)."""
        return [
            [_encoded(w, False) for w in (e, *e.overflowing)]
            for e in self._tokenizer.encode_batch(texts)
        ]
