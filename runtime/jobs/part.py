"""One part of a job: read its records -> tokenize -> bucket -> session -> pool, a window at
a time (the next window tokenized meanwhile), into `part-NNNNNN.parquet`: `id` and
`vector`, one row group per window, and in the file's key-value metadata what the part
consumed and counted (`albert_onnx`: its plan entry, rows, lines, bytes and their sha256,
the ids' kind, its counts and bad lines). The file appears whole or not at all
(`Location.writing`), so a part file that exists is a finished part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from albert_onnx.runtime.io.formats import PARQUET_OPTIONS
from albert_onnx.runtime.io.lines import LineReader
from albert_onnx.runtime.io.records import BadLine, Blank, IdKind, Item, Record
from albert_onnx.runtime.io.storage import Location
from albert_onnx.runtime.io.tabular import TabularReader
from albert_onnx.runtime.jobs.plan import Part, Plan
from albert_onnx.runtime.options import Dtype, JobOptions
from albert_onnx.runtime.pipeline.pipeline import OnBatch, Pipeline
from albert_onnx.runtime.pipeline.quantize import Ranges, arrow_type, quantize, storage
from albert_onnx.runtime.pipeline.windows import ahead
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


def part_schema(id_kind: IdKind | None, dtype: Dtype, dimension: int, ragged: bool,
                keep_text: bool = False):  # fmt: skip
    import pyarrow as pa

    _, width = storage(dtype, dimension)
    vector = pa.list_(arrow_type(dtype), width)
    return pa.schema([
        ("id", pa.string() if id_kind == "str" else pa.int64()),
        ("vector", pa.list_(vector) if ragged else vector),
        *([("text", pa.string())] if keep_text else []),
    ])  # fmt: skip


def reader_for(plan: Plan, part: Part, options: JobOptions, first_line: int,
               id_kind: IdKind | None) -> LineReader | TabularReader:  # fmt: skip
    file = plan.files[part.file]
    kind = TabularReader if file.format in ("parquet", "csv", "tsv") else LineReader
    return kind(file, part.start, part.end, first_line, options.text_field, options.id_field,
                options.on_error, id_kind, plan.numbered(part))  # fmt: skip


@dataclass(frozen=True)
class Read:
    """What reading a part consumed, once its last line is read."""

    part: Part  # with its first line filled in
    lines: int
    bytes: int
    sha256: str
    id_kind: IdKind | None  # the corpus's, as far as it is known


def read_parts(
    plan: Plan,
    parts: Sequence[Part],
    options: JobOptions,
    done: dict[int, PartMeta] | None = None,
    first_lines: dict[int, int] | None = None,
) -> Iterator[tuple[Part, Item] | Read]:
    """The items of PARTS (in plan order), each part followed by what it consumed. A part's
    first line comes from the plan, from FIRST_LINES, or from the part before it in its
    file (read here before it, or DONE by an earlier run); its ids must be of the kind the
    parts before it had."""
    starts = {i: (m.part.first_line or 1, m.lines) for i, m in (done or {}).items()}
    before, last = {}, {}
    for part in plan.parts:
        before[part.index] = last.get(part.file)
        last[part.file] = part.index
    kind = plan.id_kind or next((m.id_kind for m in (done or {}).values() if m.id_kind), None)
    for part in parts:
        first = part.first_line or (first_lines or {}).get(part.index)
        if first is None:
            start, lines = starts[before[part.index]]
            first = start + lines
        reader = reader_for(plan, part, options, first, kind)
        for item in reader:
            yield part, item
        starts[part.index] = (first, reader.lines)
        kind = kind or reader.id_kind
        yield Read(replace(part, first_line=first), reader.lines, reader.bytes, reader.sha256,
                   kind)  # fmt: skip


def iter_items(plan: Plan, options: JobOptions) -> Iterator[tuple[str, Item]]:
    """Every item of the plan's inputs in order, with its file's name: for what reads a
    corpus whole in one process (`bench --corpus`)."""
    for event in read_parts(plan, plan.parts, options):
        if not isinstance(event, Read):
            part, item = event
            yield plan.files[part.file].name, item


Window = tuple[Part, list[Item], list[Record], list]  # its part, items, records, their docs


def _windows(
    events: Iterator[tuple[Part, Item] | Read], size: int, tokenize: Callable[[list[str]], list]
) -> Iterator[Window | Read]:
    """EVENTS in windows of SIZE records, tokenized, never across a part's end."""
    items: list[Item] = []
    count, part = 0, None

    def window() -> Window:
        records = [item for item in items if isinstance(item, Record)]
        return part, items, records, tokenize([r.text for r in records])  # type: ignore[return-value]

    for event in events:
        if isinstance(event, Read):
            if items:
                yield window()
                items, count = [], 0
            yield event
            continue
        part, item = event
        items.append(item)
        count += isinstance(item, Record)
        if count == size:
            yield window()
            items, count = [], 0


def run_parts(
    pipeline: Pipeline,
    plan: Plan,
    parts: Sequence[Part],
    options: JobOptions,
    directory: Location,
    on_batch: OnBatch | None = None,
    done: dict[int, PartMeta] | None = None,
    first_lines: dict[int, int] | None = None,
    ranges: Ranges | None = None,
) -> Iterator[PartMeta]:
    """Embed PARTS into DIRECTORY/part-NNNNNN.parquet, one after another, each part's
    metadata as it is written; vectors in the options' dtype (int8 and uint8 by RANGES).
    One thread reads and tokenizes a window ahead, across the parts' ends too, while the
    current window runs (see `read_parts` for the first lines)."""
    events = ahead(_windows(read_parts(plan, parts, options, done, first_lines),
                            options.window_texts, pipeline.tokenize))  # fmt: skip
    for event in events:
        part = event.part if isinstance(event, Read) else event[0]
        with directory.child(part.name).writing() as path:
            writer = _PartFile(path, plan, part, options, pipeline, ranges)
            try:
                while not isinstance(event, Read):
                    _, items, records, docs = event
                    writer.add(items, records, pipeline.embed_docs(docs, on_batch))
                    event = next(events)
                meta = writer.finish(event)
            finally:
                writer.close()
        yield meta


def run_part(pipeline: Pipeline, plan: Plan, part: Part, options: JobOptions,
             directory: Location, first_line: int, ranges: Ranges | None) -> PartMeta:  # fmt: skip
    """Embed PART alone (a worker's task), its first line being FIRST_LINE."""
    metas = run_parts(pipeline, plan, [part], options, directory,
                      first_lines={part.index: first_line}, ranges=ranges)  # fmt: skip
    with closing(metas):
        return next(metas)


def first_id_kind(plan: Plan, options: JobOptions) -> IdKind | None:
    """The kind of the corpus's first id, read from its start: what the local executor
    carries from part to part, for an executor whose parts run apart (a bad line before it
    stops here as it would stop the local job)."""
    for event in read_parts(plan, plan.parts, options):
        if not isinstance(event, Read) and isinstance(event[1], Record):
            return "int" if isinstance(event[1].id, int) else "str"
    return None


class _PartFile:
    """One part file being written: a row group per window, the metadata last."""

    def __init__(self, path: str, plan: Plan, part: Part, options: JobOptions,
                 pipeline: Pipeline, ranges: Ranges | None) -> None:  # fmt: skip
        self.path, self.options, self.dimension = path, options, pipeline.dimension
        self.ranges = ranges
        self.ragged = pipeline.gives_token_vectors
        self.name = plan.files[part.file].name
        self.stats, self.errors = Stats(), []
        self.rows = self.vector_rows = 0
        self.writer = None

    def _open(self, id_kind: IdKind | None) -> None:
        import pyarrow.parquet as pq

        schema = part_schema(id_kind or "int", self.options.dtype, self.dimension, self.ragged,
                             self.options.keep_text)  # fmt: skip
        self.writer = pq.ParquetWriter(self.path, schema, **PARQUET_OPTIONS)

    def add(self, items: list[Item], records: list[Record], embedded: tuple) -> None:
        import pyarrow as pa

        vectors, window = embedded
        bad = [i for i in items if isinstance(i, BadLine)]
        self.errors += [{"file": self.name, "line": i.line, "reason": i.reason} for i in bad]
        window.skipped = len(bad)
        window.blank_lines = sum(isinstance(item, Blank) for item in items)
        self.stats.add(window)
        if not records:
            return
        if self.writer is None:
            self._open("int" if isinstance(records[0].id, int) else "str")
        columns = {
            "id": [r.id for r in records],
            "vector": vector_column(vectors, self.options.dtype, self.ragged, self.ranges),
        }
        if self.options.keep_text:
            columns["text"] = [r.text for r in records]
        table = pa.table(columns, schema=self.writer.schema)  # fmt: skip
        self.writer.write_table(table)
        self.rows += len(records)
        self.vector_rows += sum(map(len, vectors)) if self.ragged else len(records)

    def finish(self, read: Read) -> PartMeta:
        if self.writer is None:  # no records: an empty part is still a finished part
            self._open(read.id_kind)
        meta = PartMeta(read.part, self.rows, self.vector_rows, read.lines, read.bytes,
                        read.sha256, read.id_kind if self.rows else None,
                        self.stats.to_dict(), self.errors)  # fmt: skip
        self.writer.add_key_value_metadata({META_KEY: meta.to_json()})
        return meta

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def vector_column(vectors, dtype: Dtype, ragged: bool, ranges: Ranges | None = None):
    """Pooled vectors (n, dim) in DTYPE (`quantize`) as a fixed-size-list column; token
    vectors (a list of (tokens, dim) arrays, float dtypes only) as a list of them."""
    import pyarrow as pa

    value = arrow_type(dtype)
    if not ragged:
        flat = np.ascontiguousarray(quantize(np.asarray(vectors), dtype, ranges))
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


def read_column(location: Location, name: str) -> Iterator[list]:
    """A part file's column NAME (its ids, or its texts) a row group at a time, its vectors
    left unread."""
    import pyarrow.parquet as pq

    with location.open_read() as f, pq.ParquetFile(f) as parquet:
        for group in range(parquet.num_row_groups):
            yield parquet.read_row_group(group, columns=[name], use_threads=False)[0].to_pylist()


def read_part(location: Location, width: int) -> Iterator[tuple[list, np.ndarray, list]]:
    """A part file's (ids, vectors, lengths) a row group at a time: vectors (n, width), or all
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
            yield table.column("id").to_pylist(), values.reshape(-1, width), lengths
