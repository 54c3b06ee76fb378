"""Tokenizer stage: texts -> unpadded token id arrays, truncated at the model's max_length.

Uses the model directory's fast `tokenizer.json` through `tokenizers`, whose batch
encoding runs in parallel in Rust. Arrays are int32 until a batch is assembled, to keep
a large look-ahead window small in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True)
class Encoded:
    """One tokenized text, without padding."""

    ids: np.ndarray
    type_ids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """The model's tokenizer with truncation set, padding off (the bucketer pads)."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    @property
    def backend(self) -> Tokenizer:
        return self._tokenizer

    def encode(self, texts: list[str]) -> list[Encoded]:
        return [
            Encoded(
                np.asarray(e.ids, dtype=np.int32),
                np.asarray(e.type_ids, dtype=np.int32),
                bool(e.overflowing),
            )
            for e in self._tokenizer.encode_batch(texts)
        ]
