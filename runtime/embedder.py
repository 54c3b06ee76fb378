"""`Embedder`: the Python API over tokenizer -> bucketer -> session -> pooling.

emb = Embedder("models/albert-base-v2")        # provider and precision chosen here
vectors = emb.embed(["first text", "second"])  # float32 (n, hidden), input order
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import AlbertOnnxWarning, OptionError, OutOfMemoryError
from albert_onnx.runtime.bucketer import Batch, make_batches
from albert_onnx.runtime.model_dir import ModelDir
from albert_onnx.runtime.options import (
    LongTexts,
    Pooling,
    Precision,
    Provider,
    check_choice,
    check_positive,
)
from albert_onnx.runtime.pooling import l2_normalize, pool
from albert_onnx.runtime.providers import cpu_threads
from albert_onnx.runtime.session import open_session
from albert_onnx.runtime.stats import Stats
from albert_onnx.runtime.tokenizer import Encoded, TextTokenizer, check_texts
from albert_onnx.runtime.windows import WINDOW_TEXTS, prepared, windows

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


def coverage_warning(stats: Stats, stacklevel: int = 3) -> None:
    if stats.unknown_script:
        warnings.warn(
            f"{stats.unknown_script:,} of {stats.docs:,} texts are mostly unknown tokens: "
            "this model's vocabulary does not cover their script (CJK, emoji, ...), so their "
            "vectors are near-identical and meaningless",
            AlbertOnnxWarning,
            stacklevel=stacklevel,
        )


@contextmanager
def _progress(show: bool, total: int) -> Iterator[OnBatch | None]:
    """A rich progress bar's advance callback, or None when no bar is wanted."""
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task("embedding", total=total)
        yield lambda docs, *_: progress.advance(task, docs)


class Embedder:
    """Embeds texts with an albert-onnx model directory; no torch anywhere.

    Every option is checked here, so an API caller gets the same clear error as the CLI.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        provider: Provider = "auto",
        precision: Precision = "auto",
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        max_batch_tokens: int | None = None,
        long_texts: LongTexts = "truncate",
        threads: int | None = None,
        device_id: int | None = None,
    ) -> None:
        if pooling is not None:
            check_choice("pooling", pooling, Pooling)
        check_choice("long_texts", long_texts, LongTexts)
        if long_texts == "chunk" and pooling == "none":
            raise OptionError("long_texts='chunk' pools windows; it cannot return token vectors")
        if max_batch_tokens is not None:
            check_positive("max_batch_tokens", max_batch_tokens)
        if device_id is not None and (
            isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0
        ):
            raise OptionError(f"device_id must be a GPU index (0, 1, ...), not {device_id!r}")
        if device_id is not None and provider == "cpu":
            raise OptionError("device_id chooses a GPU; it has no meaning with provider='cpu'")
        if device_id is not None and provider == "auto":
            provider = "cuda"  # a GPU was named: running on the CPU instead would be silent
        if normalize is not None and not isinstance(normalize, bool):
            raise OptionError(f"normalize must be True, False or None, not {normalize!r}")
        threads = self._threads(threads)
        model_dir = ModelDir.open(model)
        manifest = model_dir.manifest
        opened = open_session(model_dir, provider, precision, threads, device_id or 0)
        self.model_dir = model_dir.directory
        self.provider = opened.placement.provider
        self.precision = opened.placement.precision
        self.cuda_unavailable = opened.cuda_unavailable
        if self.cuda_unavailable:
            warnings.warn(
                f"CUDA is installed but did not start, running on the CPU: {self.cuda_unavailable}",
                AlbertOnnxWarning,
                stacklevel=2,
            )
        self.fingerprint = model_dir.fingerprint(self.precision)
        self.pooling: Pooling = pooling or manifest.pooling  # type: ignore[assignment]
        self.normalize = manifest.normalize if normalize is None else normalize
        self.dimension = int(manifest.architecture["hidden_size"])
        self.max_length = manifest.max_length
        self.max_batch_tokens = max_batch_tokens or default_batch_tokens(
            self.provider, manifest.architecture
        )
        self._budget = self.max_batch_tokens  # lowered for this Embedder after out-of-memory
        self.chunked = long_texts == "chunk"
        self._graph_pooling = manifest.pooling
        self._tokenizer = TextTokenizer(
            model_dir.tokenizer(), self.max_length, self.max_length // 8 if self.chunked else 0
        )
        self._session = opened.session

    @staticmethod
    def _threads(threads: int | None) -> int:
        available = cpu_threads()
        if threads is None:
            return available
        check_positive("threads", threads)
        if threads > available:
            warnings.warn(
                f"threads={threads} is more than the {available} cores this process may use; "
                f"using {available} (more threads than cores only contend)",
                AlbertOnnxWarning,
                stacklevel=3,
            )
        return min(threads, available)

    # -- the stages -------------------------------------------------------------------

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
            raise OptionError("this Embedder gives token vectors (pooling='none'), not pooled ones")
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
            result = self._session.run(batch.inputs, output)
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

    # -- the API people know ------------------------------------------------------------

    def stream(
        self,
        texts: Iterable[str],
        on_batch: OnBatch | None = None,
        normalize: bool | None = None,
        window_texts: int = WINDOW_TEXTS,
    ) -> Iterator[tuple[np.ndarray | list[np.ndarray], Stats]]:
        """Embed an iterable window by window, tokenizing the next window meanwhile.

        Texts are checked as they are windowed: a text that is not a string, or holds a lone
        surrogate, raises an error naming its index in TEXTS.
        """
        return self._windows_of(
            texts, lambda docs, cb: self.embed_docs(docs, cb, normalize=normalize), on_batch,
            window_texts,
        )  # fmt: skip

    def _windows_of(
        self,
        texts: Iterable[str],
        embed_window: Callable[[list[Doc], OnBatch | None], tuple[Any, Stats]],
        on_batch: OnBatch | None = None,
        window_texts: int = WINDOW_TEXTS,
    ) -> Iterator[tuple[Any, Stats]]:
        check_positive("window_texts", window_texts)
        seen = 0

        def tokenize(window: list[str]) -> list[Doc]:
            nonlocal seen
            check_texts(window, first_index=seen)
            seen += len(window)
            return self.tokenize(window)

        for _, docs in prepared(windows(texts, window_texts), tokenize):
            yield embed_window(docs, on_batch)

    def _collect(
        self,
        texts: Iterable[str],
        embed_window: Callable[[list[Doc], OnBatch | None], tuple[Any, Stats]],
        show_progress_bar: bool,
        token_vectors: bool,
    ) -> np.ndarray | list[np.ndarray]:
        """Every window's vectors in input order, with a progress bar if asked."""
        if isinstance(texts, str):
            raise OptionError("pass a list of texts; wrap a single text in a list")
        if not isinstance(texts, Sequence):
            texts = list(texts)  # an iterator: its length is needed for the progress bar
        total, parts = Stats(), []
        with _progress(show_progress_bar, len(texts)) as advance:
            for vectors, stats in self._windows_of(texts, embed_window, advance):
                parts.append(vectors)
                total.add(stats)
        coverage_warning(total, stacklevel=4)
        if token_vectors:
            return [row for part in parts for row in part]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), np.float32)

    @property
    def gives_token_vectors(self) -> bool:
        """pooling='none': each text gives a (tokens, hidden) array, not one vector."""
        return self.pooling == "none"

    def embed(
        self, texts: Iterable[str], normalize: bool | None = None, show_progress_bar: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """Vectors for TEXTS in input order: float32 (n, hidden), or token vectors."""
        return self._collect(
            texts,
            lambda docs, cb: self.embed_docs(docs, cb, normalize=normalize),
            show_progress_bar,
            self.gives_token_vectors,
        )

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        output_value: Literal["sentence_embedding", "token_embeddings"] = "sentence_embedding",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool | None = None,
        precision: Literal["float32"] = "float32",
        **unsupported: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """sentence-transformers' `encode`: a single string gives a single vector.

        Batching is by token budget, so batch_size is accepted and ignored. What cannot be
        honoured without torch, or is chosen elsewhere here, is refused by name.
        """
        check_positive("batch_size", batch_size)
        refused = {
            "convert_to_tensor": (
                convert_to_tensor,
                "albert-onnx is torch-free and returns numpy arrays",
            ),
            "device": (
                device is not None,
                "the device is chosen when the Embedder is made: "
                "Embedder(provider='cuda', device_id=N)",
            ),
            "precision": (
                precision != "float32",
                "only float32 embeddings are returned (the `embed` command writes float16)",
            ),
        }
        for name, (given, why) in refused.items():
            if given:
                raise OptionError(f"encode({name}=...) is not supported: {why}")
        if unsupported:
            raise OptionError(
                f"encode() does not support {', '.join(sorted(unsupported))} "
                "(prompts, chunking and pooling are properties of the model directory)"
            )
        check_choice(
            "output_value", output_value, Literal["sentence_embedding", "token_embeddings"]
        )
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if output_value == "token_embeddings":
            if self.chunked:
                raise OptionError("token embeddings need whole texts; use long_texts='truncate'")
            vectors = self._collect(
                texts, lambda docs, cb: self.token_vectors(docs, cb), show_progress_bar, True
            )
            return vectors[0] if single else vectors
        embedded = self.embed(
            texts, normalize=normalize_embeddings, show_progress_bar=show_progress_bar
        )
        if single:
            return embedded[0]
        return embedded if convert_to_numpy else list(embedded)
