"""Ray Data, for users who build their own Ray pipelines: `embed_dataset` maps a Ray
Dataset's text column to vectors, lazily, in an actor pool of workers that each hold one
pipeline (a callable class for `map_batches`, `threads_per_worker` CPUs each, one GPU each
on CUDA), built once per worker; each block is length-bucketed under the token budget like
every other path. The model reaches the workers through the object store
(`jobs/cluster.py`). Row order follows Ray Data's `preserve_order`; there is no
exactly-once output or resume here: that is `embed --ray` (`jobs/distributed.py`).

`iter_vectors` reads a finished directory output (of `embed`, with or without --ray) back,
part by part.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import CorpusError, OptionError
from albert_onnx.runtime.jobs.cluster import (
    RETRIES,
    on_this_node,
    ray_module,
    worker_count,
    worker_model,
)
from albert_onnx.runtime.jobs.commit import open_output
from albert_onnx.runtime.jobs.part import read_part, vector_column
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import (
    Dtype,
    JobOptions,
    ModelOptions,
    check_choice,
    check_positive,
)
from albert_onnx.runtime.pipeline.quantize import CALIBRATED
from albert_onnx.runtime.pipeline.session import plan


class EmbedWorker:
    """A Ray Data worker: one Embedder, built once per actor."""

    def __init__(self, model: Any, options: dict[str, Any], text_column: str, id_column: str):
        import ray

        from albert_onnx.runtime.embedder import Embedder

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        options = dict(options)
        self.dtype = options.pop("dtype")
        self.embedder = on_this_node(model, lambda directory: Embedder(directory, **options))
        self.text_column, self.id_column = text_column, id_column

    def __call__(self, batch):
        """BATCH (a pyarrow Table) -> its id column, `vector` (a fixed-size list) and what
        embedding each row took (`tokens`, `truncated`, `unknown_script`; `padded_tokens`,
        the batch's, on every row); `part` and `row` columns, when present, are kept."""
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        if None in texts:
            raise CorpusError(f"column '{self.text_column}' holds a null text")
        docs = self.embedder.pipeline.tokenize(texts)
        vectors, stats = self.embedder.pipeline.embed_docs(docs)
        kept = [c for c in ("part", "row") if c in batch.column_names]
        return pa.table({
            **{c: batch.column(c) for c in kept},
            self.id_column: batch.column(self.id_column),
            "vector": vector_column(vectors, self.dtype, ragged=False),
            "tokens": pa.array([sum(map(len, doc)) for doc in docs], type=pa.int32()),
            "truncated": pa.array([doc[0].truncated for doc in docs]),
            "unknown_script": pa.array([doc[0].mostly_unknown for doc in docs]),
            "padded_tokens": pa.array([stats.padded_tokens] * len(docs), type=pa.int64()),
        })  # fmt: skip


def _map(dataset, model_ref, options: dict, text_column: str, id_column: str, workers: int,
         threads: int):  # fmt: skip
    import ray

    with warnings.catch_warnings():  # for max_restarts: pyproject pins ray below 2.64
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "model": model_ref,
                "options": {**options, "threads": threads},
                "text_column": text_column,
                "id_column": id_column,
            },
            batch_size=None,  # a block is one batch: the bucketer sorts it whole
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
            num_gpus=1 if options["provider"] == "cuda" else 0,
            max_restarts=RETRIES,  # Ray Data's default is unlimited: a part that always
            max_task_retries=RETRIES,  # crashes its worker would loop forever
        )


def _embedder_options(
    model: ModelDir,
    provider: str,
    precision: str,
    pooling: str | None,
    normalize: bool | None,
    dtype: str,
    max_batch_tokens: int | None,
    long_texts: str,
) -> dict[str, Any]:
    """The workers' Embedder options, checked here on the driver (a mistake found inside an
    actor comes back as a Ray traceback, late) by the options objects every front uses,
    with the precision resolved."""
    options = ModelOptions(model.directory, provider, precision, pooling, normalize,
                           max_batch_tokens, long_texts)  # fmt: skip
    JobOptions(dtype=dtype)  # type: ignore[arg-type]
    if dtype in CALIBRATED:
        raise OptionError(
            f"embed_dataset writes float or packed-bit vectors; {dtype} needs ranges calibrated "
            "over a corpus, which the corpus job does: albert-onnx embed --dtype int8 [--ray]"
        )
    check_choice("provider", provider, Literal["cpu", "cuda"])
    if pooling == "none":
        raise OptionError("Ray output holds one vector per row: pooling 'none' is not supported")
    variants = set(model.manifest.variants)
    resolved = plan(provider, precision, variants, cuda=provider == "cuda")[0].precision
    model.graph(resolved)  # a variant the model lacks is an error now, not in every worker
    return {"provider": options.provider, "precision": resolved, "pooling": options.pooling,
            "normalize": options.normalize, "max_batch_tokens": options.max_batch_tokens,
            "long_texts": options.long_texts, "dtype": dtype}  # fmt: skip


def embed_dataset(
    dataset,
    model: str | Path | None = None,
    text_column: str = "text",
    id_column: str = "id",
    *,
    workers: int = 1,
    threads_per_worker: int = 1,
    provider: str = "cpu",
    precision: str = "auto",
    pooling: str | None = None,
    normalize: bool | None = None,
    max_batch_tokens: int | None = None,
    long_texts: str = "truncate",
    dtype: Dtype = "float32",
):
    """A Ray Dataset of ID_COLUMN, `vector` (and per-row `tokens`, `truncated`,
    `unknown_script`, `padded_tokens`) for DATASET's TEXT_COLUMN, lazily: nothing runs until
    it is consumed or written. Row order follows Ray Data's `preserve_order` setting. Leave
    the read stage a CPU of its own (WORKERS below the cluster's CPUs): an actor pool that
    holds them all leaves Ray Data waiting for resources that never free up."""
    ray = ray_module()
    check_positive("workers", workers)
    check_positive("threads_per_worker", threads_per_worker)
    directory = ModelDir.open(model)
    options = _embedder_options(directory, provider, precision, pooling, normalize, dtype,
                                max_batch_tokens, long_texts)  # fmt: skip
    schema = dataset.schema(fetch_if_missing=False)
    if schema is not None:
        for column in (text_column, id_column):
            if column not in schema.names:
                raise OptionError(f"the dataset has no column '{column}' ({schema.names})")
    model_ref = ray.put(worker_model(directory))  # starts Ray, if the dataset has not
    worker_count(ray, provider, threads_per_worker, workers, fixed=False)
    return _map(dataset, model_ref, options, text_column, id_column, workers, threads_per_worker)


def iter_vectors(output: str | Path) -> Iterator[tuple[list, np.ndarray]]:
    """Read a complete directory output back, part by part: (ids, vectors). One without
    its manifest is incomplete, and refused."""
    _, parts = open_output(str(output))
    for meta in parts.metas:
        chunks = list(read_part(parts.directory.child(meta.part.name), parts.width))
        ids = [i for chunk_ids, _, _ in chunks for i in chunk_ids]
        vectors = np.concatenate([v for _, v, _ in chunks]) if chunks else np.zeros((0, 0))
        yield ids, vectors
