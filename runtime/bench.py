"""`albert-onnx bench`: a short measurement on the user's own machine, so they can choose a
variant and a provider from numbers rather than from our benchmark tables.

Every variant is timed on the same texts, one after another in this process, end to end
(tokenization, bucketing, inference, pooling), after one warm-up pass; the naive row runs the
same graph in arrival order, padded per batch, to show what length bucketing buys here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from albert_onnx.runtime.embedder import Embedder
from albert_onnx.runtime.model_dir import PREFERRED, open_model

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


@dataclass(frozen=True)
class BenchRow:
    provider: str
    precision: str
    batching: str
    docs: int
    tokens: int
    padding_overhead: float
    seconds: float
    start_seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds


def sample_texts(count: int) -> list[str]:
    """COUNT texts of mixed lengths, for when the user gives no corpus of their own."""
    return [SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)] for i in range(count)]


def bench(
    model: str | None,
    texts: list[str],
    provider: str = "auto",
    precisions: list[str] | None = None,
) -> Iterator[BenchRow]:
    """Time each available variant on TEXTS, length-sorted and in arrival order."""
    choice = open_model(model, provider)
    # the variants meant for this provider: fp16 on a CPU, or INT8 on CUDA, only on request
    available = [p for p in PREFERRED[choice.provider][:2] if p in choice.manifest.variants]
    for precision in precisions or available:
        start = time.perf_counter()
        embedder = Embedder(choice.directory, provider=choice.provider, precision=precision)
        start_seconds = time.perf_counter() - start
        embedder.embed(texts[:32])  # warm-up: first-run allocations are not throughput
        for sorted_batches in (True, False):
            start = time.perf_counter()
            _, counts = embedder.embed_tokenized(embedder.tokenize(texts), bucketing=sorted_batches)
            yield BenchRow(
                provider=embedder.provider,
                precision=embedder.precision,
                batching="sorted" if sorted_batches else "arrival",
                docs=len(texts),
                tokens=counts.tokens,
                padding_overhead=counts.padded_tokens / counts.tokens - 1,
                seconds=time.perf_counter() - start,
                start_seconds=start_seconds,
            )
