"""Tabular corpora: Parquet, CSV and TSV, streamed with pyarrow in constant memory.

Parquet is read a row group at a time (memory follows the file's row-group size); CSV and
TSV by pyarrow's streaming CSV reader, which handles the header, quoted fields and
newlines inside values. Errors name `FILE:ROW` (1 = the first data row). A text column that
is not text, or a missing column, stops at once: it is the file that is wrong, not a row.
A null text or id is a bad row. CSV cells are text, so CSV ids are strings (their exact
cell text); Parquet ids follow their column's type.

A tabular file cannot be cut by bytes, so its fingerprint is the whole file's size and
sha256: resuming refuses a file that changed at all, then skips the rows already done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.options import OnError
from albert_onnx.runtime.reader import BadLine, IdKind, IdRule, Item, Position, Record, text_problem

BATCH_ROWS = 256
CSV_BLOCK_BYTES = 1 << 20


def _file_fingerprint(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


class TabularReader:
    unit = "row"

    def __init__(
        self,
        path: Path,
        fmt: str,
        text_field: str,
        id_field: str | None,
        on_error: OnError,
        start: Position | None,
    ) -> None:
        import pyarrow as pa

        self.path, self.format = path, fmt
        self.text_field, self.id_field = text_field, id_field
        self.on_error = on_error
        self._size, self._sha256 = _file_fingerprint(path)
        self._skip = self._rows = 0
        self._malformed_rows: list[str] = []  # filled by pyarrow's hook while it parses
        schema = self._schema()
        self._malformed_rows.clear()  # the first block is parsed again when reading starts
        for field in filter(None, (text_field, id_field)):
            if field not in schema.names:
                raise CorpusError(f"{path}: no column '{field}' (it has {', '.join(schema.names)})")

        def textual(name: str) -> bool:
            kind = schema.field(name).type
            return pa.types.is_string(kind) or pa.types.is_large_string(kind)

        if not textual(text_field):
            raise CorpusError(
                f"{path}: column '{text_field}' is {schema.field(text_field).type}, not text"
            )
        kind: IdKind | None = "int"
        if id_field is not None:
            id_type = schema.field(id_field).type
            if pa.types.is_integer(id_type):
                kind = "int"
            elif textual(id_field):
                kind = "str"
            else:
                raise CorpusError(
                    f"{path}: column '{id_field}' is {id_type}; ids must be integers or strings"
                )
        self._ids = IdRule(id_field, kind)
        self.start = Position(0, self._size, self._sha256, kind)
        if start is not None:
            self.resume_from(start)

    def resume_from(self, start: Position) -> None:
        """Continue after START's rows, if the file is the one they were read from."""
        if start.lines and (start.bytes, start.sha256) != (self._size, self._sha256):
            raise CorpusError(
                f"{self.path}: changed since the interrupted run (a {self.format.upper()} "
                "file is fingerprinted whole: its size or sha256 differ); use --force to "
                "start over"
            )
        self.start = start
        self._skip = self._rows = start.lines

    @property
    def id_kind(self) -> IdKind | None:
        return self._ids.kind

    def position(self) -> Position:
        return Position(self._rows, self._size, self._sha256, self.id_kind)

    # -- formats ---------------------------------------------------------------------------

    def _schema(self):
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(self.path)
        with self._csv() as reader:
            return reader.schema

    @contextmanager
    def _csv(self) -> Iterator:
        """pyarrow's streaming CSV reader (it parses the first block on opening); its errors
        become one CorpusError naming the file."""
        import pyarrow as pa
        import pyarrow.csv as csv

        columns = [c for c in (self.text_field, self.id_field) if c]
        stream = pa.input_stream(
            str(self.path), compression="gzip" if self.path.name.endswith(".gz") else None
        )
        try:
            with csv.open_csv(
                stream,
                read_options=csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=csv.ParseOptions(
                    delimiter="\t" if self.format == "tsv" else ",",
                    newlines_in_values=True,
                    invalid_row_handler=self._malformed,
                ),
                convert_options=csv.ConvertOptions(
                    include_columns=columns,
                    column_types={c: pa.string() for c in columns},
                    strings_can_be_null=False,
                ),
            ) as reader:
                yield reader
        except pa.ArrowInvalid as exc:  # a malformed row (raise mode), or cells not UTF-8
            reason = self._malformed_rows[-1] if self._malformed_rows else str(exc)
            raise CorpusError(f"{self.path}: {reason}") from exc

    def _malformed(self, row) -> str:
        """pyarrow's hook for a row with the wrong number of fields. Exceptions raised here
        are swallowed by pyarrow, so in raise mode the reason is kept and "error" returned;
        `_batches` turns pyarrow's error into one that says it."""
        text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
        reason = (
            f"a malformed row ({row.actual_columns} fields, expected {row.expected_columns}): "
            f"{text}"
        )
        self._malformed_rows.append(reason)
        return "error" if self.on_error == "raise" else "skip"

    def _batches(self) -> Iterator:
        columns = [c for c in (self.text_field, self.id_field) if c]
        if self.format == "parquet":
            import pyarrow.parquet as pq

            # one row group at a time: iter_batches reads ahead and held 2.5x the memory
            with pq.ParquetFile(self.path) as parquet:
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=columns, use_threads=False)
                    yield from table.to_batches(max_chunksize=BATCH_ROWS)
                    del table
            return
        with self._csv() as reader:
            yield from reader

    # -- records ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Item]:
        skip = self._skip
        for batch in self._batches():
            if skip <= 0:  # bad rows pyarrow set aside in this block (reported before, if skipped)
                yield from (BadLine(self._rows + 1, reason) for reason in self._malformed_rows)
            self._malformed_rows.clear()
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
            texts = batch.column(self.text_field).to_pylist()
            ids = batch.column(self.id_field).to_pylist() if self.id_field else None
            for i, text in enumerate(texts):
                self._rows += 1
                item = self._record(text, ids[i] if ids is not None else self._rows)
                if isinstance(item, BadLine) and self.on_error == "raise":
                    raise CorpusError(f"{self.path}:{item.line}: {item.reason}")
                yield item

    def _record(self, text: object, identifier: object) -> Item:
        number = self._rows
        if text is None:
            return BadLine(number, f"field '{self.text_field}' is null")
        reason = text_problem(self.text_field, text)
        if reason:
            return BadLine(number, reason)
        if self.id_field is not None:
            if identifier is None:
                return BadLine(number, f"field '{self.id_field}' is null")
            reason = self._ids.check(identifier)
            if reason:
                return BadLine(number, reason)
        return Record(number, identifier, text)
