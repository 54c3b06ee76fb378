"""Single-file outputs, assembled from a run's part files in one streaming pass each
(constant memory): .npy (+ OUTPUT.ids.jsonl), .npz (embeddings, ids, offsets for token
vectors), .jsonl and .parquet. Ids are stored exactly: int64 or fixed-width unicode in .npz
(never a pickled object array), int64 or string in .parquet, JSON elsewhere."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import numpy as np

from albert_onnx.runtime.io.storage import Location

FORMATS = (".npy", ".npz", ".parquet", ".jsonl", ".lance")  # .lance: a Lance dataset (io/lance)
RAGGED_FORMATS = (".npz", ".jsonl")
TEXT_FORMATS = (".parquet", ".jsonl", ".lance")  # and directories of parts: --keep-text

Chunk = tuple[list, np.ndarray, list[int]]  # ids, vectors, token counts (token vectors only)
# Parquet of ids and vectors (part files, .parquet outputs): vectors do not compress and are
# never looked up by value, so no codec, dictionary or statistics for them (2.6x faster to
# write); snappy and min/max statistics for the ids
PARQUET_OPTIONS = {"compression": {"id": "snappy", "vector": "none"}, "use_dictionary": False,
                   "write_statistics": ["id"]}  # fmt: skip


class Rows(Protocol):
    """A run's rows in input order, a chunk at a time: what the formats read."""

    rows: int  # ids (records)
    vector_rows: int  # vectors: one per record, or one per token for token vectors

    def chunks(self) -> Iterator[Chunk]: ...

    def texts(self) -> Iterator[list[str]]: ...  # --keep-text: one list per chunk


def write_output(
    output: Location, rows: Rows, dtype: np.dtype, dimension: int, id_kind: str, ragged: bool,
    keep_text: bool = False, index: bool = False,
) -> None:  # fmt: skip
    """Write OUTPUT (format by its suffix) whole or not at all: vectors of DIMENSION values
    of DTYPE (for packed bits, DIMENSION is their bytes), with KEEP_TEXT the texts, and for
    Lance with INDEX an ANN index."""
    fmt = "." + output.name.rsplit(".", 1)[-1]
    if fmt == ".lance":
        from albert_onnx.runtime.io.lance_dataset import write_lance

        schema, batches = arrow_batches(rows, dtype, dimension, id_kind, keep_text)
        write_lance(output, schema, batches, index, dtype.kind == "f", dimension, rows.rows)
        return
    if fmt == ".npy":
        output.write_atomic(lambda f: _write_npy(f, rows, dtype, dimension))
    elif fmt == ".npz":
        output.write_atomic(lambda f: _write_npz(f, rows, dtype, dimension, id_kind, ragged))
    elif fmt == ".jsonl":
        output.write_atomic(lambda f: _write_jsonl(f, rows, ragged, keep_text))
    else:
        _write_parquet(output, rows, dtype, dimension, id_kind, keep_text)


def _with_texts(rows: Rows, keep_text: bool) -> Iterator[tuple[Chunk, list[str] | None]]:
    texts = rows.texts() if keep_text else itertools.repeat(None)
    return zip(rows.chunks(), texts, strict=False)


def write_ids_jsonl(f: BinaryIO, rows: Rows) -> None:
    for ids, _, _ in rows.chunks():
        f.write("".join(json.dumps(i) + "\n" for i in ids).encode())


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


def _write_npy(f: BinaryIO, rows: Rows, dtype: np.dtype, dimension: int) -> None:
    _header(f, dtype, (rows.vector_rows, dimension))
    for _, vectors, _ in rows.chunks():
        _raw(f, vectors.astype(dtype, copy=False))


def _write_ids_npy(f: BinaryIO, rows: Rows, id_kind: str) -> None:
    if id_kind == "int":
        dtype = np.dtype(np.int64)
    else:
        width = max((len(i) for ids, _, _ in rows.chunks() for i in ids), default=0)
        dtype = np.dtype(f"<U{max(width, 1)}")
    _header(f, dtype, (rows.rows,))
    for ids, _, _ in rows.chunks():
        _raw(f, np.array(ids, dtype=dtype))


def _write_npz(
    f: BinaryIO, rows: Rows, dtype: np.dtype, dimension: int, id_kind: str, ragged: bool
) -> None:
    with zipfile.ZipFile(f, "w", allowZip64=True) as archive:
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            _write_npy(member, rows, dtype, dimension)
        with archive.open("ids.npy", "w", force_zip64=True) as member:
            _write_ids_npy(member, rows, id_kind)
        if ragged:
            lengths = [n for _, _, chunk in rows.chunks() for n in chunk]
            with archive.open("offsets.npy", "w", force_zip64=True) as member:
                write_npy(member, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _write_jsonl(f: BinaryIO, rows: Rows, ragged: bool, keep_text: bool) -> None:
    for (ids, vectors, lengths), texts in _with_texts(rows, keep_text):
        if ragged:
            bounds = np.cumsum([0, *lengths])
            values = [vectors[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        else:
            values = vectors.tolist()
        lines = [{"id": i, "vector": v} for i, v in zip(ids, values, strict=True)]
        for line, text in zip(lines, texts or [], strict=bool(texts)):
            line["text"] = text
        f.write("".join(json.dumps(line) + "\n" for line in lines).encode())


def arrow_batches(rows: Rows, dtype: np.dtype, dimension: int, id_kind: str, keep_text: bool):
    """ROWS as Arrow record batches (`id`, `vector`, with KEEP_TEXT `text`) and their schema:
    what the Parquet and Lance outputs write."""
    import pyarrow as pa

    value_type = pa.from_numpy_dtype(dtype)
    id_type = pa.int64() if id_kind == "int" else pa.string()
    schema = pa.schema([("id", id_type), ("vector", pa.list_(value_type, dimension)),
                        *([("text", pa.string())] if keep_text else [])])  # fmt: skip

    def batches() -> Iterator:
        for (ids, vectors, _), texts in _with_texts(rows, keep_text):
            flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
            columns = [pa.array(ids, type=id_type),
                       pa.FixedSizeListArray.from_arrays(flat, dimension)]  # fmt: skip
            if keep_text:
                columns.append(pa.array(texts, pa.string()))
            yield pa.record_batch(columns, schema=schema)

    return schema, batches()


def _write_parquet(
    output: Location, rows: Rows, dtype: np.dtype, dimension: int, id_kind: str, keep_text: bool
) -> None:
    import pyarrow.parquet as pq

    schema, batches = arrow_batches(rows, dtype, dimension, id_kind, keep_text)
    with output.writing() as path, pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as parquet:
        for batch in batches:
            parquet.write_batch(batch)
