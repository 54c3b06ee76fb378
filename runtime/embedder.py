"""`Embedder`: the Python API over tokenizer -> bucketer -> session -> pooling.

emb = Embedder("models/albert-base-v2")        # provider and precision chosen here
vectors = emb.embed(["first text", "second"])  # float32 (n, hidden), input order
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_onnx.runtime.bucketer import WINDOW_TEXTS, make_batches
from albert_onnx.runtime.model_dir import open_model
from albert_onnx.runtime.pooling import MODES, l2_normalize, pool
from albert_onnx.runtime.prefetch import ahead
from albert_onnx.runtime.providers import cpu_threads
from albert_onnx.runtime.session import ModelSession
from albert_onnx.runtime.tokenizer import Encoded, TextTokenizer

DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 131072}
LONG_TEXTS = ("truncate", "chunk")


@dataclass
class Counts:
    """What embedding one window took; the writer sums them for the final summary."""

    docs: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0


OnBatch = Callable[[int, int], None]  # (docs finished, real tokens) after each batch


class Embedder:
    """Embeds texts with an albert-onnx model directory; no torch anywhere."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        provider: str = "auto",
        precision: str = "auto",
        pooling: str | None = None,
        normalize: bool | None = None,
        max_batch_tokens: int | None = None,
        long_texts: str = "truncate",
        threads: int | None = None,
    ) -> None:
        choice = open_model(model, provider, precision)
        manifest = choice.manifest
        self.model_dir, self.provider, self.precision = (
            choice.directory,
            choice.provider,
            choice.precision,
        )
        self.pooling = pooling or manifest.pooling
        if self.pooling not in MODES:
            raise ValueError(f"unknown pooling {self.pooling!r} (one of {', '.join(MODES)})")
        if long_texts not in LONG_TEXTS:
            raise ValueError(f"long_texts must be one of {LONG_TEXTS}, not {long_texts!r}")
        if long_texts == "chunk" and self.pooling == "none":
            raise ValueError("long_texts='chunk' pools windows; it cannot return token vectors")
        self.normalize = manifest.normalize if normalize is None else normalize
        self.dimension = int(manifest.architecture["hidden_size"])
        self.max_length = manifest.max_length
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS[self.provider]
        self.chunked = long_texts == "chunk"
        self._graph_pooling = manifest.pooling
        self._tokenizer = TextTokenizer(
            choice.tokenizer, self.max_length, overlap=self.max_length // 8 if self.chunked else 0
        )
        self._session = ModelSession(choice.graph, self.provider, threads or cpu_threads())

    # -- the stages -------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> list[list[Encoded]]:
        """Windows of each text: one (truncated) window unless long_texts='chunk'."""
        if self.chunked:
            return self._tokenizer.encode_windows(texts)
        return [[encoded] for encoded in self._tokenizer.encode(texts)]

    def embed_tokenized(
        self,
        docs: list[list[Encoded]],
        on_batch: OnBatch | None = None,
        bucketing: bool = True,
        normalize: bool | None = None,
    ) -> tuple[np.ndarray | list[np.ndarray], Counts]:
        """Vectors for tokenized DOCS in their order, and what it took."""
        windows = [w for doc in docs for w in doc]
        owner = np.repeat(np.arange(len(docs)), [len(doc) for doc in docs])
        counts = Counts(docs=len(docs), truncated=sum(doc[0].truncated for doc in docs))
        token_rows: list[np.ndarray] = [np.empty(0)] * len(windows)
        vectors = np.empty((len(windows), self.dimension), dtype=np.float32)
        for batch in make_batches(windows, self.max_batch_tokens, sort=bucketing):
            counts.tokens += batch.real_tokens
            counts.padded_tokens += batch.padded_tokens
            if self.pooling == "none":
                hidden = self._session.run(batch.inputs, "last_hidden_state")
                for row, window in zip(batch.rows, hidden, strict=True):
                    token_rows[row] = window[: len(windows[row])].astype(np.float32)
            else:
                vectors[batch.rows] = self._pooled(batch.inputs)
            if on_batch:  # a chunked text is finished only with its window of texts
                on_batch(0 if self.chunked else len(batch.rows), batch.real_tokens)
        if on_batch and self.chunked:
            on_batch(len(docs), 0)
        if self.pooling == "none":
            return token_rows, counts
        if len(windows) != len(docs):
            vectors = self._combine_windows(vectors, windows, owner, len(docs))
        normalize = self.normalize if normalize is None else normalize
        return (l2_normalize(vectors) if normalize else vectors), counts

    def _pooled(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.pooling == self._graph_pooling:
            return self._session.run(inputs, "sentence_embedding")
        hidden = self._session.run(inputs, "last_hidden_state")
        return pool(hidden, inputs["attention_mask"], self.pooling)

    @staticmethod
    def _combine_windows(
        vectors: np.ndarray, windows: list[Encoded], owner: np.ndarray, n: int
    ) -> np.ndarray:
        """A long text's vector: its windows' vectors averaged, weighted by their tokens."""
        weights = np.array([len(w) for w in windows], dtype=np.float32)[:, None]
        combined = np.zeros((n, vectors.shape[1]), dtype=np.float32)
        np.add.at(combined, owner, vectors * weights)
        totals = np.zeros((n, 1), dtype=np.float32)
        np.add.at(totals, owner, weights)
        return combined / totals

    # -- the API people know ------------------------------------------------------------

    def stream(
        self, texts: Iterable[str], on_batch: OnBatch | None = None, normalize: bool | None = None
    ) -> Iterator[tuple[np.ndarray | list[np.ndarray], Counts]]:
        """Embed an iterable window by window, tokenizing the next window meanwhile."""

        def tokenized() -> Iterator[list[list[Encoded]]]:
            window: list[str] = []
            for text in texts:
                window.append(text)
                if len(window) == WINDOW_TEXTS:
                    yield self.tokenize(window)
                    window = []
            if window:
                yield self.tokenize(window)

        for docs in ahead(tokenized()):
            yield self.embed_tokenized(docs, on_batch, normalize=normalize)

    def embed(
        self, texts: Sequence[str], normalize: bool | None = None, show_progress_bar: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """Vectors for TEXTS in input order: float32 (n, hidden), or token vectors."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; wrap a single text in a list")
        if show_progress_bar:
            from rich.progress import Progress

            with Progress() as progress:
                task = progress.add_task("embedding", total=len(texts))
                parts = [
                    v
                    for v, _ in self.stream(
                        texts, lambda docs, _: progress.advance(task, docs), normalize
                    )
                ]
        else:
            parts = [v for v, _ in self.stream(texts, normalize=normalize)]
        if self.pooling == "none":
            return [row for part in parts for row in part]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), np.float32)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        normalize_embeddings: bool | None = None,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """sentence-transformers' `encode`; batching is by token budget, so batch_size is
        only accepted for compatibility. A single string gives a single vector."""
        del batch_size, convert_to_numpy
        single = isinstance(sentences, str)
        vectors = self.embed(
            [sentences] if single else list(sentences),
            normalize=normalize_embeddings,
            show_progress_bar=show_progress_bar,
        )
        return vectors[0] if single else vectors
