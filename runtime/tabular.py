"""Tabular corpora: Parquet, CSV and TSV, streamed in constant memory.

Parquet is read with pyarrow a row group at a time (memory follows the file's row-group
size; `iter_batches` reads ahead and held 2.5x more). CSV and TSV are read with Python's
`csv` module, one row at a time: it handles the header, quotes and newlines inside values,
and, unlike pyarrow's reader (which drops a malformed row and cannot say where it was),
lets every row keep its number. Errors name `FILE:ROW`, 1 being the first data row; every
data row counts, blank and malformed ones included.

A missing column, or a Parquet text column that is not text, stops at once: it is the file
that is wrong. A null or non-UTF-8 value, or a CSV row with the wrong number of fields, is
a bad row. CSV cells are text, so CSV ids are strings (the cells' exact text); Parquet ids
follow their column's type. A tabular file cannot be cut by bytes, so its fingerprint is
the whole file's size and sha256: resuming refuses a file that changed at all, then skips
the rows already done.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.manifest import sha256_of
from albert_onnx.runtime.options import OnError
from albert_onnx.runtime.reader import (
    BadLine,
    Blank,
    IdKind,
    IdRule,
    Item,
    Position,
    Record,
    text_problem,
)
from albert_onnx.runtime.tokenizer import lone_surrogate

BATCH_ROWS = 256


@contextmanager
def _csv_field_limit() -> Iterator[None]:
    """The csv module refuses fields over 131,072 characters; a document may be longer.
    The limit is the module's, so it is raised for the read and put back after."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class TabularReader:
    """Rows of a Parquet, CSV or TSV file as records, blank rows and bad rows."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        text_field: str,
        id_field: str | None,
        on_error: OnError,
        start: Position | None,
    ) -> None:
        self.path, self.format = path, fmt
        self.text_field, self.id_field = text_field, id_field
        self.on_error = on_error
        self._size, self._sha256 = path.stat().st_size, sha256_of(path)
        self._skip = self._rows = 0
        columns = self._parquet_columns() if fmt == "parquet" else self._csv_header()
        for field in filter(None, (text_field, id_field)):
            if field not in columns:
                raise CorpusError(f"{path}: no column '{field}' (it has {', '.join(columns)})")
            if columns.count(field) > 1:
                raise CorpusError(
                    f"{path}: {columns.count(field)} columns are named '{field}'; which one "
                    "to read is not clear: rename the others"
                )
        kind = self._parquet_id_kind() if fmt == "parquet" else "str" if id_field else "int"
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

    def __iter__(self) -> Iterator[Item]:
        rows = self._parquet_rows() if self.format == "parquet" else self._csv_rows()
        for item in rows:
            if isinstance(item, BadLine) and self.on_error == "raise":
                raise CorpusError(f"{self.path}:{item.line}: {item.reason}")
            yield item

    def _record(self, number: int, text: object, identifier: object) -> Item:
        if text is None:
            return BadLine(number, f"field '{self.text_field}' is null")
        reason = text_problem(self.text_field, text)
        if reason:
            return BadLine(number, reason)
        if self.id_field is None:
            return Record(number, number, text)
        if identifier is None:
            return BadLine(number, f"field '{self.id_field}' is null")
        reason = self._ids.check(identifier)
        return BadLine(number, reason) if reason else Record(number, identifier, text)

    # -- Parquet ---------------------------------------------------------------------------

    @contextmanager
    def _parquet(self) -> Iterator:
        """The open file; pyarrow's errors (a corrupt or cut file) become one CorpusError."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(self.path) as parquet:
                yield parquet
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{self.path}: not a readable Parquet file ({exc})") from exc

    def _parquet_columns(self) -> list[str]:
        with self._parquet() as parquet:
            self._schema = parquet.schema_arrow
        return self._schema.names

    def _parquet_id_kind(self) -> IdKind:
        import pyarrow as pa

        def values(name: str) -> pa.DataType:
            """The column's value type: a dictionary-encoded column (pandas' Categorical)
            holds its dictionary's values."""
            kind = self._schema.field(name).type
            return kind.value_type if pa.types.is_dictionary(kind) else kind

        def textual(name: str) -> bool:
            kind = values(name)
            return (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_string_view(kind)
            )

        if not textual(self.text_field):
            found = self._schema.field(self.text_field).type
            raise CorpusError(f"{self.path}: column '{self.text_field}' is {found}, not text")
        if self.id_field is None:
            return "int"
        id_type = self._schema.field(self.id_field).type
        if pa.types.is_integer(values(self.id_field)):
            return "int"
        if textual(self.id_field):
            return "str"
        raise CorpusError(
            f"{self.path}: column '{self.id_field}' is {id_type}; ids must be integers or strings"
        )

    def _parquet_rows(self) -> Iterator[Item]:
        columns = [c for c in (self.text_field, self.id_field) if c]
        with self._parquet() as parquet:
            skip = self._skip
            for group in range(parquet.num_row_groups):
                count = parquet.metadata.row_group(group).num_rows
                if skip >= count:  # resuming: whole row groups are skipped unread
                    skip -= count
                    continue
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
                for batch in table.slice(skip).to_batches(max_chunksize=BATCH_ROWS):
                    texts = batch.column(self.text_field).to_pylist()
                    ids = batch.column(self.id_field).to_pylist() if self.id_field else None
                    for i, text in enumerate(texts):
                        self._rows += 1
                        yield self._record(self._rows, text, ids[i] if ids else None)
                skip = 0

    # -- CSV and TSV -----------------------------------------------------------------------

    @contextmanager
    def _csv(self) -> Iterator:
        """The csv reader over the (decompressed) file, and the header's columns. Bytes that
        are not UTF-8 are kept as surrogates, so that only their row is bad, not the file."""
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        with (
            opener(self.path, "rb") as binary,
            io.TextIOWrapper(
                binary, encoding="utf-8-sig", errors="surrogateescape", newline=""
            ) as text,  # fmt: skip
            _csv_field_limit(),
        ):
            # strict: a quote out of place is a bad row naming its line, instead of a field
            # that swallows the rows after it
            reader = csv.reader(text, delimiter="\t" if self.format == "tsv" else ",", strict=True)
            try:
                header = next(reader, [])
                yield reader, header
            except csv.Error as exc:  # the header: a quote out of place, a NUL byte
                raise CorpusError(f"{self.path}: line {reader.line_num}: {exc}") from exc
            except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt .gz
                raise CorpusError(f"{self.path}: {exc}") from exc

    def _csv_header(self) -> list[str]:
        with self._csv() as (_, header):
            return header

    def _csv_rows(self) -> Iterator[Item]:
        with self._csv() as (reader, header):
            text_at = header.index(self.text_field)
            id_at = header.index(self.id_field) if self.id_field else None
            for number, row in enumerate(_rows_or_errors(reader, self.path), start=1):
                if number <= self._skip:
                    continue
                self._rows = number
                if isinstance(row, str):
                    yield BadLine(number, row)
                elif not row:
                    yield Blank(number)
                elif len(row) != len(header):
                    yield BadLine(number, f"has {len(row)} fields, the header {len(header)}")
                else:
                    identifier = row[id_at] if id_at is not None else None
                    yield self._csv_record(number, row[text_at], identifier)

    def _csv_record(self, number: int, text: str, identifier: str | None) -> Item:
        for field, value in ((self.text_field, text), (self.id_field, identifier)):
            # undecodable bytes were kept as lone surrogates (surrogateescape)
            if value is not None and lone_surrogate(value) is not None:
                return BadLine(number, f"field '{field}' is not valid UTF-8")
        return self._record(number, text, identifier)


def _rows_or_errors(reader, path: Path) -> Iterator[list[str] | str]:
    """The csv READER's rows, with a malformed row as the reason it is bad (the reader goes
    on after it, at the next line). A quote never closed is not one bad row but a broken
    file: every row after it would be inside that field, so it stops the job whatever
    --on-error says."""
    while True:
        first = reader.line_num + 1
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise CorpusError(
                    f"{path}: line {first}: a quote opened in this row is never closed, so the "
                    f"rest of the file (to line {reader.line_num:,}) would be one field"
                ) from exc
            yield (
                f"malformed at line {reader.line_num} ({exc}): a field with a quote in it must "
                'be quoted whole, its quotes doubled ("")'
            )
