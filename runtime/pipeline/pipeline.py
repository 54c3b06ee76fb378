"""The pipeline: tokenizer -> bucketer -> session -> pooling, with the batch budget and the
out-of-memory policy. What the corpus job, the server's engine and Ray workers drive; the
user-facing `Embedder` (`runtime/embedder.py`) is a front over it, the way fastembed keeps
its ONNX model apart from `TextEmbedding`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from albert_onnx.errors import AlbertOnnxWarning, OptionError, OutOfMemoryError
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import ModelOptions, Pooling
from albert_onnx.runtime.pipeline.bucketer import Batch, make_batches
from albert_onnx.runtime.pipeline.pooling import l2_normalize, pool
from albert_onnx.runtime.pipeline.providers import cpu_threads
from albert_onnx.runtime.pipeline.quantize import Ranges
from albert_onnx.runtime.pipeline.session import open_session, plan
from albert_onnx.runtime.pipeline.tokenizer import Encoded, TextTokenizer
from albert_onnx.runtime.stats import Stats

CPU_BATCH_TOKENS = 4096
# On CUDA, 131,072 padded tokens for albert-base's FFN width of 3,072, scaled to the model's
CUDA_BATCH_TOKENS, CUDA_REFERENCE_FFN = 131_072, 3072
CUDA_BATCH_TOKEN_RANGE = (8192, 262_144)

Doc = list[Encoded]  # a text's windows: one, unless long_texts="chunk" cuts a long text
# after each batch: (docs finished, its real tokens, its padded tokens)
OnBatch = Callable[[int, int, int], None]


def default_batch_tokens(provider: str, architecture: dict[str, Any]) -> int:
    """Padded tokens per batch: fixed on the CPU, scaled to the FFN width on CUDA."""
    if provider == "cpu":
        return CPU_BATCH_TOKENS
    ffn = int(architecture.get("intermediate_size", CUDA_REFERENCE_FFN))
    low, high = CUDA_BATCH_TOKEN_RANGE
    return min(high, max(low, CUDA_BATCH_TOKENS * CUDA_REFERENCE_FFN // ffn)) // 8 * 8


def model_settings(
    model_dir: ModelDir, options: ModelOptions, provider: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What vectors made by OPTIONS depend on, as a resumed job compares them; PROVIDER and
    PRECISION as a session chose them (by default as OPTIONS name them, resolved from
    the model's variants without starting a session: what a driver that embeds nothing
    itself knows)."""
    manifest = model_dir.manifest
    provider = provider or options.provider
    if precision is None:
        variants = set(manifest.variants)
        precision = plan(provider, options.precision, variants, cuda=provider == "cuda")[
            0
        ].precision
    return {
        **model_dir.fingerprint(precision),
        "dimension": int(manifest.architecture["hidden_size"]),
        "provider": provider,
        "precision": precision,
        "pooling": options.pooling or manifest.pooling,
        "normalize": manifest.normalize if options.normalize is None else options.normalize,
        "max_batch_tokens": options.max_batch_tokens
        or default_batch_tokens(provider, manifest.architecture),
        "chunked": options.long_texts == "chunk",
    }


def coverage_warning(stats: Stats, stacklevel: int = 3) -> None:
    if stats.unknown_script:
        warnings.warn(
            f"{stats.unknown_script:,} of {stats.docs:,} texts are mostly unknown tokens: "
            "this model's vocabulary does not cover their script (CJK, emoji, ...), so their "
            "vectors are near-identical and meaningless",
            AlbertOnnxWarning,
            stacklevel=stacklevel,
        )


class Pipeline:
    """A model directory's session and tokenizer, run as OPTIONS say; no torch anywhere."""

    def __init__(self, options: ModelOptions, stacklevel: int = 2) -> None:
        threads = self._threads(options.threads, stacklevel + 1)
        model_dir = ModelDir.open(options.model)
        manifest = model_dir.manifest
        opened = open_session(
            model_dir, options.provider, options.precision, threads, options.device_id or 0
        )
        self.options = options
        self._model = model_dir
        self.model_dir: Path = model_dir.directory
        self.provider = opened.placement.provider
        self.precision = opened.placement.precision
        self.cuda_unavailable = opened.cuda_unavailable
        if self.cuda_unavailable:
            warnings.warn(
                f"CUDA is installed but did not start, running on the CPU: {self.cuda_unavailable}",
                AlbertOnnxWarning,
                stacklevel=stacklevel + 1,
            )
        self.fingerprint = model_dir.fingerprint(self.precision)
        recorded = manifest.calibration.get(self.precision)
        self.calibration = Ranges.from_dict(recorded) if recorded else None  # int8/uint8
        self.pooling: Pooling = options.pooling or manifest.pooling  # type: ignore[assignment]
        self.normalize = manifest.normalize if options.normalize is None else options.normalize
        self.dimension = int(manifest.architecture["hidden_size"])
        self.max_length = manifest.max_length
        self.max_batch_tokens = options.max_batch_tokens or default_batch_tokens(
            self.provider, manifest.architecture
        )
        self._budget = self.max_batch_tokens  # lowered for this pipeline after out-of-memory
        self.chunked = options.long_texts == "chunk"
        self._graph_pooling = manifest.pooling
        self._tokenizer = TextTokenizer(
            model_dir.tokenizer(), self.max_length, self.max_length // 8 if self.chunked else 0
        )
        self.session = opened.session

    @staticmethod
    def _threads(threads: int | None, stacklevel: int) -> int:
        available = cpu_threads()
        if threads is None:
            return available
        if threads > available:
            warnings.warn(
                f"threads={threads} is more than the {available} cores this process may use; "
                f"using {available} (more threads than cores only contend)",
                AlbertOnnxWarning,
                stacklevel=stacklevel + 1,
            )
        return min(threads, available)

    def settings(self) -> dict[str, Any]:
        """What the vectors depend on: a resumed job must have the same."""
        return model_settings(ModelDir.open(self.model_dir), self.options, self.provider,
                              self.precision)  # fmt: skip

    @property
    def gives_token_vectors(self) -> bool:
        """pooling='none': each text gives a (tokens, hidden) array, not one vector."""
        return self.pooling == "none"

    def tokenize(self, texts: list[str]) -> list[Doc]:
        """Windows of each text: one (truncated) window unless long_texts='chunk'."""
        if self.chunked:
            return self._tokenizer.encode_windows(texts)
        return [[encoded] for encoded in self._tokenizer.encode(texts)]

    def embed_docs(
        self,
        docs: list[Doc],
        on_batch: OnBatch | None = None,
        bucketing: bool = True,
        normalize: bool | None = None,
    ) -> tuple[np.ndarray | list[np.ndarray], Stats]:
        """Pooled vectors, or token vectors with pooling='none', for tokenized DOCS: the one
        place that tells the two apart."""
        if self.gives_token_vectors:
            return self.token_vectors(docs, on_batch, bucketing)
        return self.pooled(docs, on_batch, bucketing, normalize)

    def pooled(
        self,
        docs: list[Doc],
        on_batch: OnBatch | None = None,
        bucketing: bool = True,
        normalize: bool | None = None,
    ) -> tuple[np.ndarray, Stats]:
        """One float32 vector per doc, in DOCS' order, and what it took."""
        windows_ = [w for doc in docs for w in doc]
        vectors = np.empty((len(windows_), self.dimension), dtype=np.float32)
        stats = self._doc_stats(docs)
        for rows, pooled in self._pooled_windows(windows_, stats, on_batch, bucketing):
            vectors[rows] = pooled
        if on_batch and self.chunked:  # a chunked text is finished only with its window
            on_batch(len(docs), 0, 0)
        if len(windows_) != len(docs):
            vectors = self._combine_windows(vectors, docs)
        normalize = self.normalize if normalize is None else normalize
        return (l2_normalize(vectors) if normalize else vectors), stats

    def pooled_batches(
        self, docs: list[Doc], on_batch: OnBatch | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each batch's positions in DOCS and their pooled, unnormalized vectors, as soon as
        it has run: for a server, which answers each request once its rows are in. Whole
        texts only (one window each)."""
        if any(len(doc) != 1 for doc in docs):
            raise OptionError("pooled_batches embeds whole texts; long_texts='chunk' cut some")
        windows_ = [doc[0] for doc in docs]
        stats = self._doc_stats(docs)
        return self._pooled_windows(windows_, stats, on_batch, True)

    def _pooled_windows(
        self,
        windows_: list[Encoded],
        stats: Stats,
        on_batch: OnBatch | None,
        bucketing: bool,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.pooling == "none":
            raise OptionError("this pipeline gives token vectors (pooling='none'), not pooled ones")
        mode = self.pooling
        in_graph = mode == self._graph_pooling
        output = "sentence_embedding" if in_graph else "last_hidden_state"
        for batch, result in self._batches(windows_, output, bucketing, stats, on_batch):
            yield (
                batch.rows,
                (result if in_graph else pool(result, batch.inputs["attention_mask"], mode)),
            )

    def token_vectors(
        self, docs: list[Doc], on_batch: OnBatch | None = None, bucketing: bool = True
    ) -> tuple[list[np.ndarray], Stats]:
        """Each doc's (tokens, hidden) float32 token vectors, special tokens included."""
        if any(len(doc) > 1 for doc in docs):
            raise OptionError("token vectors need whole texts; long_texts='chunk' cut some")
        windows_ = [doc[0] for doc in docs]
        rows: list[np.ndarray] = [np.empty((0, self.dimension), np.float32)] * len(windows_)
        stats = self._doc_stats(docs)
        for batch, hidden in self._batches(
            windows_, "last_hidden_state", bucketing, stats, on_batch
        ):
            for row, vectors in zip(batch.rows, hidden, strict=True):
                rows[row] = vectors[: len(windows_[row])].astype(np.float32)
        return rows, stats

    @staticmethod
    def _doc_stats(docs: list[Doc]) -> Stats:
        return Stats(
            docs=len(docs),
            truncated=sum(doc[0].truncated for doc in docs),
            unknown_script=sum(doc[0].mostly_unknown for doc in docs),
        )

    def _batches(
        self,
        windows_: list[Encoded],
        output: str,
        bucketing: bool,
        stats: Stats,
        on_batch: OnBatch | None,
    ) -> Iterator[tuple[Batch, np.ndarray]]:
        for batch in make_batches(windows_, self._budget, sort=bucketing):
            for part, result in self._run(batch, output):
                stats.tokens += part.real_tokens
                stats.padded_tokens += part.padded_tokens
                yield part, result
                if on_batch:
                    docs_done = 0 if self.chunked else len(part.rows)
                    on_batch(docs_done, part.real_tokens, part.padded_tokens)

    def _run(self, batch: Batch, output: str) -> Iterator[tuple[Batch, np.ndarray]]:
        """Run BATCH; out of device memory, halve it (and the budget) and run the halves."""
        try:
            result = self.session.run(batch.inputs, output)
        except OutOfMemoryError:
            if len(batch.rows) == 1:
                raise
            budget = max(1, min(self._budget, batch.padded_tokens) // 2)
            warnings.warn(
                f"out of memory on a batch of {batch.padded_tokens:,} padded tokens; "
                f"retrying in halves, and batches now hold at most {budget:,}",
                AlbertOnnxWarning,
                stacklevel=2,
            )
            self._budget = budget
            for half in batch.halves():
                yield from self._run(half, output)
            return
        yield batch, result

    @staticmethod
    def _combine_windows(vectors: np.ndarray, docs: list[Doc]) -> np.ndarray:
        """A long text's vector: its windows' vectors averaged, weighted by their tokens."""
        owner = np.repeat(np.arange(len(docs)), [len(doc) for doc in docs])
        weights = np.array([len(w) for doc in docs for w in doc], dtype=np.float32)[:, None]
        combined = np.zeros((len(docs), vectors.shape[1]), dtype=np.float32)
        np.add.at(combined, owner, vectors * weights)
        totals = np.zeros((len(docs), 1), dtype=np.float32)
        np.add.at(totals, owner, weights)
        return combined / totals
