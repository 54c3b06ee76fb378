"""`Embedder`: the Python API, a front over the pipeline (`pipeline/pipeline.py`):
`embed`, `encode` as in sentence-transformers, and `stream` for iterables.

emb = Embedder("models/albert-base-v2")        # provider and the graph's precision
vectors = emb.embed(["first text", "second"])  # float32 (n, hidden), input order
bits = emb.embed(texts, precision="binary")     # (n, hidden / 8) packed bits

The graph's precision (fp32, int8, fp16 weights) is chosen when the Embedder is made; the
`precision` of `embed` and `encode` is that of the vectors returned, as in
sentence-transformers (`pipeline/quantize.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import OptionError
from albert_onnx.runtime.options import (
    WINDOW_TEXTS,
    Dtype,
    LongTexts,
    ModelOptions,
    Pooling,
    Precision,
    Provider,
    check_choice,
    check_positive,
)
from albert_onnx.runtime.pipeline.pipeline import Doc, OnBatch, Pipeline, coverage_warning
from albert_onnx.runtime.pipeline.quantize import CALIBRATED, Ranges, quantize
from albert_onnx.runtime.pipeline.tokenizer import check_texts
from albert_onnx.runtime.pipeline.windows import prepared, windows
from albert_onnx.runtime.stats import Stats


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

    Every option is checked here (`ModelOptions`), so an API caller gets the same clear
    error as the CLI. The corpus job, the server and Ray workers drive `pipeline`.
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
        options = ModelOptions(
            model, provider, precision, pooling, normalize, max_batch_tokens, long_texts,
            threads, device_id,
        )  # fmt: skip
        self.pipeline = Pipeline(options, stacklevel=3)

    @property
    def model_dir(self) -> Path:
        return self.pipeline.model_dir

    @property
    def dimension(self) -> int:
        return self.pipeline.dimension

    @property
    def max_length(self) -> int:
        return self.pipeline.max_length

    @property
    def provider(self) -> str:
        return self.pipeline.provider

    @property
    def precision(self) -> str:
        return self.pipeline.precision

    @property
    def pooling(self) -> str:
        return self.pipeline.pooling

    @property
    def normalize(self) -> bool:
        return self.pipeline.normalize

    @property
    def max_batch_tokens(self) -> int:
        return self.pipeline.max_batch_tokens

    @property
    def cuda_unavailable(self) -> str | None:
        """Why CUDA did not start, when provider 'auto' fell back to the CPU."""
        return self.pipeline.cuda_unavailable

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
        pipeline = self.pipeline
        return self._windows_of(
            texts, lambda docs, cb: pipeline.embed_docs(docs, cb, normalize=normalize), on_batch,
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
            return self.pipeline.tokenize(window)

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
        return (
            np.concatenate(parts) if parts else np.zeros((0, self.pipeline.dimension), np.float32)
        )

    def embed(
        self,
        texts: Iterable[str],
        normalize: bool | None = None,
        show_progress_bar: bool = False,
        precision: Dtype = "float32",
        ranges: Ranges | np.ndarray | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Vectors for TEXTS in input order: (n, hidden) in PRECISION (float32, float16;
        int8 and uint8 by RANGES, an array (2, hidden) of minima and maxima as
        sentence-transformers takes them, by default the model's calibration; binary and
        ubinary: packed bits, (n, hidden / 8)), or float32 token vectors with pooling
        'none'."""
        calibrated = self._ranges(precision, ranges)
        vectors = self._collect(
            texts,
            lambda docs, cb: self.pipeline.embed_docs(docs, cb, normalize=normalize),
            show_progress_bar,
            self.pipeline.gives_token_vectors,
        )
        return vectors if self.pipeline.gives_token_vectors else quantize(
            vectors, precision, calibrated
        )  # fmt: skip

    def _ranges(self, precision: Dtype, ranges: Any) -> Ranges | None:
        """PRECISION checked against what the vectors are and RANGES, before any work."""
        check_choice("precision", precision, Dtype)
        if self.pipeline.gives_token_vectors and precision != "float32":
            raise OptionError("token vectors (pooling none) are returned as float32")
        if precision not in CALIBRATED:
            if ranges is not None:
                raise OptionError(f"ranges quantize int8 and uint8 vectors, not {precision}")
            return None
        if ranges is None:
            if self.pipeline.calibration is None:
                raise OptionError(
                    f"{precision} vectors need each dimension's range, and this model has "
                    "none recorded: run `albert-onnx calibrate MODEL CORPUS`, or pass ranges= "
                    "(an array (2, dimension) of minima and maxima, such as an int8 output's "
                    "manifest records)"
                )
            return self.pipeline.calibration
        return Ranges.of(ranges, self.pipeline.dimension)

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
        precision: Dtype = "float32",
        ranges: Ranges | np.ndarray | None = None,
        **unsupported: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """sentence-transformers' `encode`: a single string gives a single vector.

        Batching is by token budget, so batch_size is accepted and ignored. PRECISION and
        RANGES are `embed`'s. What cannot be honoured without torch, or is chosen elsewhere
        here, is refused by name.
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
            if precision != "float32":
                raise OptionError("token embeddings are returned as float32")
            if self.pipeline.chunked:
                raise OptionError("token embeddings need whole texts; use long_texts='truncate'")
            vectors = self._collect(
                texts,
                lambda docs, cb: self.pipeline.token_vectors(docs, cb),
                show_progress_bar,
                True,
            )
            return vectors[0] if single else vectors
        embedded = self.embed(
            texts, normalize=normalize_embeddings, show_progress_bar=show_progress_bar,
            precision=precision, ranges=ranges,
        )  # fmt: skip
        if single:
            return embedded[0]
        return embedded if convert_to_numpy else list(embedded)
