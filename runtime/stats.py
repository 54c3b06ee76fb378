"""What embedding took, counted in one typed place: the job's summary, the state file that
lets a run resume with its counts, `albert-onnx bench` and the benchmarks all read it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
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


DUPLICATE_BUCKETS = 64


def count_duplicates(id_chunks: Iterable[list[int] | list[str]]) -> int:
    """Rows whose id appeared before, in bounded memory: each id as 8 bytes (integer ids
    exactly, string ids by their 64-bit hash: a false duplicate needs a collision, about 1
    in 10^7 at 10^6 ids) spread over DUPLICATE_BUCKETS temporary files by a mix of its
    bits, then each bucket sorted on its own: memory follows the largest bucket, about
    1/64 of 8 bytes per id."""
    with tempfile.TemporaryDirectory(prefix="albert-onnx-ids-") as workdir:
        paths = [Path(workdir) / f"{b:02d}" for b in range(DUPLICATE_BUCKETS)]
        files = [open(path, "wb") for path in paths]  # noqa: SIM115 (closed below, all 64)
        try:
            for chunk in id_chunks:
                keys = np.fromiter(
                    (i if isinstance(i, int) else hash(i) for i in chunk), np.int64, len(chunk)
                )
                buckets = _mix(keys) % DUPLICATE_BUCKETS
                order = np.argsort(buckets, kind="stable")
                starts = np.searchsorted(buckets[order], np.arange(DUPLICATE_BUCKETS + 1))
                for b in range(DUPLICATE_BUCKETS):
                    if starts[b] < starts[b + 1]:
                        keys[order[starts[b] : starts[b + 1]]].tofile(files[b])
        finally:
            for f in files:
                f.close()
        found = 0
        for path in paths:
            keys = np.sort(np.fromfile(path, dtype=np.int64))
            found += int(np.count_nonzero(keys[1:] == keys[:-1]))
        return found


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads consecutive ids over the buckets."""
    x = keys.view(np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x
