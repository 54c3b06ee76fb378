"""The final output, assembled from a run's shards in one streaming pass per file (constant
memory): .npy (+ OUTPUT.ids.jsonl), .npz (embeddings, ids, offsets for token vectors),
.jsonl and .parquet. Ids are stored exactly: int64 or fixed-width unicode in .npz (never a
pickled object array), int64 or string in .parquet, JSON elsewhere."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from albert_onnx.runtime.files import atomic_write, replacing

FORMATS = (".npy", ".npz", ".parquet", ".jsonl")
RAGGED_FORMATS = (".npz", ".jsonl")


class Shards(Protocol):
    """A run's shards, in order: what the formats read."""

    rows: int  # ids (records)
    vector_rows: int  # vectors: one per record, or one per token for token vectors

    def vectors(self) -> Iterator[np.ndarray]: ...
    def metas(self) -> Iterator[dict]: ...  # each shard's ids, errors and lengths
    def ids(self) -> Iterator[list]: ...


def write_output(
    output: Path, shards: Shards, dtype: np.dtype, dimension: int, id_kind: str, ragged: bool
) -> None:
    """Write OUTPUT (format by its suffix) atomically."""
    fmt = output.suffix
    if fmt == ".npy":
        atomic_write(output, lambda f: _write_npy(f, shards, dtype, dimension))
    elif fmt == ".npz":
        atomic_write(output, lambda f: _write_npz(f, shards, dtype, dimension, id_kind, ragged))
    elif fmt == ".jsonl":
        atomic_write(output, lambda f: _write_jsonl(f, shards, ragged))
    else:
        _write_parquet(output, shards, dtype, dimension, id_kind)


def write_ids_jsonl(f: BinaryIO, shards: Shards) -> None:
    for ids in shards.ids():
        f.write("".join(json.dumps(i) + "\n" for i in ids).encode())


def write_errors_jsonl(f: BinaryIO, shards: Shards) -> None:
    for meta in shards.metas():
        f.write("".join(json.dumps(e) + "\n" for e in meta["errors"]).encode())


def write_npy(f: BinaryIO, array: np.ndarray) -> None:
    """ARRAY as a .npy file through F's own writes, so a failed write keeps the OS's reason
    (numpy's `save` to a real file reports a short write as "N requested and M written")."""
    _header(f, array.dtype, array.shape)
    _raw(f, array)


def _header(f: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(f, header)


def _raw(f: BinaryIO, array: np.ndarray) -> None:
    if array.size:  # a memoryview of a zero-size array cannot be cast to bytes
        f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def _write_npy(f: BinaryIO, shards: Shards, dtype: np.dtype, dimension: int) -> None:
    _header(f, dtype, (shards.vector_rows, dimension))
    for vectors in shards.vectors():
        _raw(f, vectors)


def _write_ids_npy(f: BinaryIO, shards: Shards, id_kind: str) -> None:
    if id_kind == "int":
        dtype = np.dtype(np.int64)
    else:
        width = max((len(i) for ids in shards.ids() for i in ids), default=0)
        dtype = np.dtype(f"<U{max(width, 1)}")
    _header(f, dtype, (shards.rows,))
    for ids in shards.ids():
        _raw(f, np.array(ids, dtype=dtype))


def _write_npz(
    f: BinaryIO, shards: Shards, dtype: np.dtype, dimension: int, id_kind: str, ragged: bool
) -> None:
    with zipfile.ZipFile(f, "w", allowZip64=True) as archive:
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            _write_npy(member, shards, dtype, dimension)
        with archive.open("ids.npy", "w", force_zip64=True) as member:
            _write_ids_npy(member, shards, id_kind)
        if ragged:
            lengths = [n for meta in shards.metas() for n in meta["lengths"]]
            with archive.open("offsets.npy", "w", force_zip64=True) as member:
                np.save(member, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _write_jsonl(f: BinaryIO, shards: Shards, ragged: bool) -> None:
    for vectors, meta in zip(shards.vectors(), shards.metas(), strict=True):
        if ragged:
            bounds = np.cumsum([0, *meta["lengths"]])
            rows = [vectors[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        else:
            rows = vectors.tolist()
        f.write(
            "".join(
                json.dumps({"id": i, "vector": v}) + "\n"
                for i, v in zip(meta["ids"], rows, strict=True)
            ).encode()
        )


def _write_parquet(
    output: Path, shards: Shards, dtype: np.dtype, dimension: int, id_kind: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    value_type = pa.float16() if dtype == np.float16 else pa.float32()
    id_type = pa.int64() if id_kind == "int" else pa.string()
    schema = pa.schema([("id", id_type), ("vector", pa.list_(value_type, dimension))])
    with replacing(output) as tmp, pq.ParquetWriter(tmp, schema) as parquet:
        for vectors, ids in zip(shards.vectors(), shards.ids(), strict=True):
            flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
            column = pa.FixedSizeListArray.from_arrays(flat, dimension)
            table = pa.table({"id": pa.array(ids, type=id_type), "vector": column})
            parquet.write_table(table.cast(schema))
