"""What embedding took, counted in one typed place: the job's summary, the state file that
lets a run resume with its counts, `albert-onnx bench` and the benchmarks all read it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass
class Stats:
    docs: int = 0
    tokens: int = 0  # real tokens, special tokens included
    padded_tokens: int = 0  # what the session ran, padding included
    truncated: int = 0
    unknown_script: int = 0  # texts whose tokens are mostly the unknown token
    skipped: int = 0  # bad lines logged with on_error="skip"
    blank_lines: int = 0
    duplicate_ids: int = 0  # rows whose id an earlier row already had
    seconds: float = 0.0

    def add(self, other: Stats) -> Stats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def padding_overhead(self) -> float:
        """Padded tokens run per real token, minus one: 0.1 means 10% of the work was padding."""
        return self.padded_tokens / self.tokens - 1 if self.tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain ints and floats (counts may arrive as numpy scalars), for the state file."""
        return {f.name: type(f.default)(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stats:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def count_duplicates(id_chunks: Iterable[list[int] | list[str]]) -> int:
    """Rows whose id appeared before, in 8 bytes per id: integer ids exactly, string ids by
    their 64-bit hash (a false duplicate needs a collision, about 1 in 10^7 at 10^6 ids)."""
    keys = [
        np.fromiter((i if isinstance(i, int) else hash(i) for i in chunk), np.int64, len(chunk))
        for chunk in id_chunks
    ]
    if not keys:
        return 0
    merged = np.sort(np.concatenate(keys))
    return int(np.count_nonzero(merged[1:] == merged[:-1]))
