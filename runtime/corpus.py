"""`albert-onnx embed`: a JSONL corpus through every stage into one output, resumably.

reader -> (windows of records) -> tokenizer, in a background thread -> bucketer ->
session -> pooling -> writer (one atomic shard per window, final file in input order).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from albert_onnx.runtime.bucketer import WINDOW_TEXTS
from albert_onnx.runtime.embedder import Counts, Embedder, OnBatch
from albert_onnx.runtime.prefetch import ahead
from albert_onnx.runtime.reader import BadLine, Blank, OnError, Record, read_jsonl
from albert_onnx.runtime.writer import ShardWriter


@dataclass
class Window:
    records: list[Record] = field(default_factory=list)
    errors: list[BadLine] = field(default_factory=list)
    blank: int = 0
    last_line: int = 0


@dataclass
class Summary:
    docs: int
    tokens: int
    padded_tokens: int
    truncated: int
    skipped: int
    blank_lines: int
    seconds: float
    resumed_after_line: int
    outputs: list[str]

    @property
    def padding_overhead(self) -> float:
        return self.padded_tokens / self.tokens - 1 if self.tokens else 0.0


def windows(items: Iterator, size: int) -> Iterator[Window]:
    """Group reader items into windows of SIZE records (bad and blank lines ride along)."""
    window = Window()
    for item in items:
        window.last_line = item.line
        if isinstance(item, Record):
            window.records.append(item)
        elif isinstance(item, BadLine):
            window.errors.append(item)
        elif isinstance(item, Blank):
            window.blank += 1
        if len(window.records) == size:
            yield window
            window = Window()
    if window.last_line:
        yield window


def embed_corpus(
    embedder: Embedder,
    corpus: Path,
    output: Path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: OnError = "raise",
    dtype: str = "float32",
    resume: bool = False,
    force: bool = False,
    window_texts: int = WINDOW_TEXTS,
    on_batch: OnBatch | None = None,
) -> Summary:
    """Embed every record of CORPUS into OUTPUT, in input order; see module docstring."""
    start = time.perf_counter()
    settings = {
        "corpus": str(Path(corpus).resolve()),
        "model": str(embedder.model_dir.resolve()),
        "provider": embedder.provider,
        "precision": embedder.precision,
        "pooling": embedder.pooling,
        "normalize": embedder.normalize,
        "max_batch_tokens": embedder.max_batch_tokens,
        "chunked": embedder.chunked,
        "text_field": text_field,
        "id_field": id_field,
        "on_error": on_error,
        "dtype": dtype,
        "window_texts": window_texts,
    }
    writer = ShardWriter(
        output, settings, dtype=dtype, ragged=embedder.pooling == "none", resume=resume, force=force
    )
    resumed_after = writer.lines_done
    items = read_jsonl(corpus, text_field, id_field, on_error, start_after_line=resumed_after)

    def tokenized() -> Iterator[tuple[Window, list]]:
        for window in windows(items, window_texts):
            yield window, embedder.tokenize([r.text for r in window.records])

    for window, docs in ahead(tokenized()):
        vectors, counts = embedder.embed_tokenized(docs, on_batch)
        lengths = None
        if embedder.pooling == "none":
            lengths = np.array([len(v) for v in vectors], dtype=np.int64)
            vectors = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dimension))
        writer.write_shard(
            ids=[r.id for r in window.records],
            vectors=vectors,
            lengths=lengths,
            errors=[{"line": e.line, "reason": e.reason} for e in window.errors],
            lines_done=window.last_line,
            counts={**asdict(counts), "skipped": len(window.errors), "blank_lines": window.blank},
        )
    totals = {**asdict(Counts()), "skipped": 0, "blank_lines": 0, **writer.counts}
    outputs = writer.finish(embedder.dimension, keep_errors=on_error == "skip")
    return Summary(
        **totals,
        seconds=time.perf_counter() - start,
        resumed_after_line=resumed_after,
        outputs=[str(p) for p in outputs],
    )
