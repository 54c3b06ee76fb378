"""The Lance output (`OUTPUT.lance`, the `lance` extra: pylance): a Lance dataset of `id`,
`vector` (and `text` with --keep-text), written at the commit from the run's parts like
every single-file output, so it is resumable and holds each record exactly once.

A Lance dataset is a directory that Lance makes visible by committing its manifest (under
`_versions/`) last: one that has no version yet is what a killed write left, and is
replaced. On a local filesystem it is written beside its place and renamed into it. With
`--index` an IVF_PQ index is built on the vectors (inner product) for approximate search;
`search` uses it, and refines the candidates by their exact score.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from albert_onnx.errors import AlbertOnnxWarning, OptionError
from albert_onnx.runtime.io.files import fsync_dir
from albert_onnx.runtime.io.storage import Location

VERSIONS = "_versions"
INDEX_MIN_ROWS = 256  # PQ codebooks of 256 centroids are trained on at least this many rows


def lance_module():
    try:
        import lance
    except ImportError as exc:
        raise OptionError(
            f"Lance outputs need the lance extra: pip install 'albert-onnx[lance]' ({exc})"
        ) from exc
    return lance


def write_lance(output: Location, schema, batches: Iterator, index: bool, float_vectors: bool,
                dimension: int, rows: int) -> None:  # fmt: skip
    """Write the dataset whole (see the module docstring); with INDEX, its ANN index."""
    import pyarrow as pa

    lance = lance_module()
    reader = pa.RecordBatchReader.from_batches(schema, batches)
    output.delete()  # what a killed commit left (a forced run cleared a complete one)
    if output.local:
        temporary = Path(output.path).with_name(f".{output.name}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        lance.write_dataset(reader, str(temporary), schema=schema, mode="create")
        if index:
            _index(lance.dataset(str(temporary)), float_vectors, dimension, rows)
        os.replace(temporary, output.path)
        fsync_dir(temporary.parent)
        return
    lance.write_dataset(reader, output.spec, schema=schema, mode="create")
    if index:
        _index(lance.dataset(output.spec), float_vectors, dimension, rows)


def _index(dataset, float_vectors: bool, dimension: int, rows: int) -> None:
    if not float_vectors:
        warnings.warn("an ANN index is built on float vectors only: search scans the "
                      "others exactly", AlbertOnnxWarning, stacklevel=4)  # fmt: skip
        return
    if rows < INDEX_MIN_ROWS:
        warnings.warn(f"{rows:,} rows are too few to train an index on (at least "
                      f"{INDEX_MIN_ROWS}): search scans them exactly", AlbertOnnxWarning,
                      stacklevel=4)  # fmt: skip
        return
    sub_vectors = next(n for n in (dimension // 8, dimension // 4, dimension // 2, 1)
                       if n and dimension % n == 0)  # fmt: skip
    dataset.create_index("vector", index_type="IVF_PQ", metric="dot",
                         num_partitions=max(1, min(int(np.sqrt(rows)), rows // INDEX_MIN_ROWS)),
                         num_sub_vectors=sub_vectors)  # fmt: skip


def lance_rows(output: Location, batch_rows: int) -> Iterator[tuple[list, np.ndarray]]:
    """The dataset's (ids, vectors) in order, BATCH_ROWS at a time."""
    dataset = lance_module().dataset(output.spec)
    for batch in dataset.to_batches(columns=["id", "vector"], batch_size=batch_rows):
        values = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
        yield batch.column("id").to_pylist(), values.reshape(len(batch), -1)


def has_index(output: Location) -> bool:
    return bool(lance_module().dataset(output.spec).describe_indices())


def nearest(output: Location, query: np.ndarray, k: int, nprobes: int,
            refine: int) -> tuple[list, np.ndarray]:  # fmt: skip
    """The K rows the index finds nearest QUERY, refined by their exact inner products:
    (ids, scores), best first."""
    dataset = lance_module().dataset(output.spec)
    found: Any = dataset.to_table(
        columns=["id", "vector", "_distance"],
        nearest={"column": "vector", "q": query, "k": k, "metric": "dot", "nprobes": nprobes,
                 "refine_factor": refine},
    )  # fmt: skip
    vectors = found.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    scores = vectors.reshape(len(found), -1).astype(np.float32) @ query
    order = np.argsort(-scores, kind="stable")
    ids = found.column("id").to_pylist()
    return [ids[i] for i in order], scores[order]
