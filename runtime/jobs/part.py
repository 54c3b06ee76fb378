"""One part of a job: read its records -> tokenize -> bucket -> session -> pool, a window at
a time (the next window tokenized meanwhile), into `part-NNNNNN.parquet`: `id` and
`vector`, one row group per window, and in the file's key-value metadata what the part
consumed and counted (`albert_onnx`: its plan entry, rows, lines, bytes and their sha256,
the ids' kind, its counts and bad lines). The file appears whole or not at all
(`Location.writing`), so a part file that exists is a finished part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from albert_onnx.runtime.io.lines import LineReader
from albert_onnx.runtime.io.records import BadLine, Blank, IdKind, Item, Record
from albert_onnx.runtime.io.storage import Location
from albert_onnx.runtime.io.tabular import TabularReader
from albert_onnx.runtime.jobs.plan import Part, Plan
from albert_onnx.runtime.options import JobOptions
from albert_onnx.runtime.pipeline.pipeline import OnBatch, Pipeline
from albert_onnx.runtime.pipeline.windows import prepared, windows
from albert_onnx.runtime.stats import Stats

META_KEY = b"albert_onnx"
PART_FORMAT = 1


@dataclass(frozen=True)
class PartMeta:
    """What a part file says about itself (its metadata's `albert_onnx`)."""

    part: Part  # with its first line filled in
    rows: int
    vector_rows: int  # rows, or for token vectors the tokens
    lines: int  # lines (rows) of the input it consumed, blank and bad ones included
    bytes: int
    sha256: str
    id_kind: IdKind | None  # None when it holds no rows
    stats: dict[str, Any]
    errors: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps({"format": PART_FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text: bytes) -> PartMeta:
        data = json.loads(text)
        if data.pop("format", None) != PART_FORMAT:
            raise ValueError("another part format")
        return cls(**{**data, "part": Part(**data["part"])})


def part_schema(id_kind: IdKind | None, dtype: str, dimension: int, ragged: bool):
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    vector = pa.list_(value, dimension)
    return pa.schema([
        ("id", pa.string() if id_kind == "str" else pa.int64()),
        ("vector", pa.list_(vector) if ragged else vector),
    ])  # fmt: skip


def reader_for(plan: Plan, part: Part, options: JobOptions, first_line: int,
               id_kind: IdKind | None) -> LineReader | TabularReader:  # fmt: skip
    file = plan.files[part.file]
    kind = TabularReader if file.format in ("parquet", "csv", "tsv") else LineReader
    return kind(file, part.start, part.end, first_line, options.text_field, options.id_field,
                options.on_error, id_kind, plan.numbered(part))  # fmt: skip


def iter_items(plan: Plan, options: JobOptions) -> Iterator[tuple[str, Item]]:
    """Every item of the plan's inputs in order, part after part, with its file's name: for
    what reads a corpus whole in one process (`bench --corpus`)."""
    next_line: dict[int, int] = {}
    kind = plan.id_kind
    for part in plan.parts:
        first = part.first_line or next_line[part.file]
        reader = reader_for(plan, part, options, first, kind)
        for item in reader:
            yield plan.files[part.file].name, item
        next_line[part.file] = first + reader.lines
        kind = kind or reader.id_kind


def run_part(
    pipeline: Pipeline,
    plan: Plan,
    part: Part,
    options: JobOptions,
    directory: Location,
    first_line: int,
    id_kind: IdKind | None,
    on_batch: OnBatch | None = None,
) -> PartMeta:
    """Embed PART into DIRECTORY/part-NNNNNN.parquet; its first line is FIRST_LINE, and its
    ids must be of ID_KIND where that is known."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = reader_for(plan, part, options, first_line, id_kind)
    file = plan.files[part.file]
    stats, errors, rows, vector_rows = Stats(), [], 0, 0
    ragged = pipeline.gives_token_vectors

    def prepare(items: list[Item]) -> tuple[list[Record], list]:
        records = [item for item in items if isinstance(item, Record)]
        return records, pipeline.tokenize([r.text for r in records])

    writer = None
    with directory.child(part.name).writing() as path:
        try:
            groups = windows(reader, options.window_texts, lambda i: isinstance(i, Record))
            for items, (records, docs) in prepared(groups, prepare):
                vectors, window = pipeline.embed_docs(docs, on_batch)
                bad = [i for i in items if isinstance(i, BadLine)]
                errors += [{"file": file.name, "line": i.line, "reason": i.reason} for i in bad]
                window.skipped = len(bad)
                window.blank_lines = sum(isinstance(item, Blank) for item in items)
                stats.add(window)
                if not records:
                    continue
                if writer is None:
                    schema = part_schema(reader.id_kind, options.dtype, pipeline.dimension,
                                         ragged)  # fmt: skip
                    writer = pq.ParquetWriter(path, schema)
                writer.write_table(
                    pa.table(
                        {
                            "id": [r.id for r in records],
                            "vector": vector_column(vectors, options.dtype, ragged),
                        },
                        schema=writer.schema,
                    )
                )
                rows += len(records)
                vector_rows += sum(map(len, vectors)) if ragged else len(records)
            if writer is None:  # no records: an empty part is still a finished part
                kind = reader.id_kind or id_kind or "int"
                schema = part_schema(kind, options.dtype, pipeline.dimension, ragged)
                writer = pq.ParquetWriter(path, schema)
            meta = PartMeta(
                replace(part, first_line=first_line), rows, vector_rows, reader.lines, reader.bytes,
                reader.sha256, reader.id_kind if rows else None, stats.to_dict(), errors,
            )  # fmt: skip
            writer.add_key_value_metadata({META_KEY: meta.to_json()})
        finally:
            if writer is not None:
                writer.close()
    return meta


def vector_column(vectors, dtype: str, ragged: bool):
    """Pooled vectors (n, dim) as a fixed-size-list column; token vectors (a list of
    (tokens, dim) arrays) as a list of them."""
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    if not ragged:
        flat = np.ascontiguousarray(vectors, dtype=dtype)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=value),
                                                 flat.shape[1])  # fmt: skip
    lengths = [len(v) for v in vectors]
    flat = np.concatenate(vectors).astype(dtype) if vectors else np.zeros((0, 1), dtype)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=value),
                                              flat.shape[1])  # fmt: skip
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, inner)


def read_meta(location: Location) -> PartMeta | None:
    """The metadata of the part file at LOCATION, or None if it is not one this albert-onnx
    wrote (damaged, another format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with location.open_read() as f:
            found = pq.read_metadata(f).metadata or {}
        return PartMeta.from_json(found[META_KEY])
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError):
        return None


def read_part(location: Location, dimension: int) -> Iterator[tuple[list, np.ndarray, list]]:
    """A part file's (ids, vectors, lengths) a row group at a time: vectors (n, dim), or all
    token vectors stacked, with each row's count in LENGTHS (empty for pooled vectors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with location.open_read() as f, pq.ParquetFile(f) as parquet:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            column = table.column("vector").combine_chunks()
            lengths: list[int] = []
            if pa.types.is_fixed_size_list(column.type.value_type):  # token vectors
                lengths = np.diff(column.offsets.to_numpy()).tolist()
                column = column.flatten()
            values = column.flatten().to_numpy(zero_copy_only=False)
            yield table.column("id").to_pylist(), values.reshape(-1, dimension), lengths
