"""Measuring: `time_embedding`, the one timing helper the `bench` command and the benchmark
scripts share, and `albert-onnx bench`, a short measurement on the user's own machine so
they can choose a variant and a provider from numbers rather than from our tables.

Every variant is timed on the same texts, one after another in this process, end to end
(tokenization, bucketing, inference, pooling), after one warm-up pass; the arrival-order
row runs the same graph padded per batch in input order, to show what bucketing buys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from albert_onnx.errors import OptionError
from albert_onnx.runtime.embedder import Embedder
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import Precision, Provider
from albert_onnx.runtime.pipeline.session import PREFERRED
from albert_onnx.runtime.stats import Stats

SAMPLE_SENTENCES = (
    "A man is playing a guitar on the street.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Ocean temperatures have risen measurably over the past four decades, and the effect on "
    "coral reefs, fisheries and coastal weather is now visible in long-running surveys.",
    "How do I reset my password?",
    "The train was delayed because of a signal failure near the main station, so many "
    "passengers missed their connections and had to wait for the evening service.",
    "Two dogs are running through a field.",
)


def time_embedding(embedder: Embedder, texts: list[str], bucketing: bool = True) -> Stats:
    """Tokenize and embed TEXTS in memory, timed end to end: the same arithmetic for
    length-sorted and arrival-order batching, so the two are comparable."""
    start = time.perf_counter()
    pipeline = embedder.pipeline
    _, stats = pipeline.embed_docs(pipeline.tokenize(texts), bucketing=bucketing)
    stats.seconds = time.perf_counter() - start
    return stats


@dataclass(frozen=True)
class BenchRow:
    provider: str
    precision: str
    batching: str
    stats: Stats
    start_seconds: float


def sample_texts(count: int) -> list[str]:
    """COUNT texts of mixed lengths, for when the user gives no corpus of their own."""
    return [SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)] for i in range(count)]


def bench(
    model: str | None,
    texts: list[str],
    provider: Provider = "auto",
    precisions: list[Precision] | None = None,
) -> Iterator[BenchRow]:
    """Time PRECISIONS (default: the variant `auto` picks and the next one meant for the
    provider, e.g. INT8 and fp32 on a CPU) on TEXTS, length-sorted and in arrival order."""
    if not texts:
        raise OptionError("bench needs at least one text")
    pending = list(precisions or ["auto"])
    while pending:
        precision = pending.pop(0)
        start = time.perf_counter()
        embedder = Embedder(model, provider=provider, precision=precision)
        start_seconds = time.perf_counter() - start
        if precisions is None and precision == "auto":
            variants = ModelDir.open(model).manifest.variants
            preferred = [p for p in PREFERRED[embedder.provider] if p in variants]
            pending += [p for p in preferred if p != embedder.precision][:1]
        embedder.embed(texts[:32])  # warm-up: first-run allocations are not throughput
        for bucketing in (True, False):
            yield BenchRow(
                embedder.provider,
                embedder.precision,
                "sorted" if bucketing else "arrival",
                time_embedding(embedder, texts, bucketing),
                start_seconds,
            )
