"""Tabular inputs: Parquet, CSV and TSV, streamed in constant memory.

Parquet is read with pyarrow a row group at a time (memory follows the file's row-group
size; `iter_batches` reads ahead and held 2.5x more); a part is a run of whole row groups,
planned from the footer. CSV and TSV are read with Python's `csv` module, one row at a time:
it handles the header, quotes and newlines inside values, and, unlike pyarrow's reader
(which drops a malformed row and cannot say where it was), lets every row keep its number.
A quoted value may hold a line end, so a CSV file cannot be cut at a byte offset without
reading what comes before: each CSV file is one part. Errors name `FILE:ROW`, 1 being the
first data row; every data row counts, blank and malformed ones included.

A missing column, a column the job reads named twice, or a Parquet text column that is not
text, stops at once: it is the file that is wrong. A null or non-UTF-8 value, or a CSV row
with the wrong number of fields, is a bad row. CSV cells are text, so CSV ids are strings
(the cells' exact text); Parquet ids follow their column's type. What a part consumed is
fingerprinted as it is read: a CSV file's bytes, a Parquet part's row-group metadata (the
offsets, sizes and statistics of the column chunks it read).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.io.lines import check_head
from albert_onnx.runtime.io.records import (
    BadLine,
    Blank,
    IdKind,
    Item,
    PartReader,
    Record,
    text_problem,
)
from albert_onnx.runtime.pipeline.tokenizer import lone_surrogate

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


def _check_columns(name: str, columns: list[str], fields: list[str]) -> None:
    for field in fields:
        if field not in columns:
            raise CorpusError(f"{name}: no column '{field}' (it has {', '.join(columns)})")
        if columns.count(field) > 1:
            raise CorpusError(
                f"{name}: {columns.count(field)} columns are named '{field}'; which one to "
                "read is not clear: rename the others"
            )


class _Hashing(io.RawIOBase):
    """A binary stream that hashes and counts what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.count = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        self.count += len(data)
        return len(data)


class TabularReader(PartReader):
    """The rows of one part of a Parquet, CSV or TSV file, as records, blank rows and bad
    rows. Parquet: row groups [START, END); CSV and TSV: the whole file. FIRST_LINE is the
    first row's number. After reading, `lines`, `bytes` and `sha256` say what it consumed."""

    def _items(self) -> Iterator[Item]:
        return self._parquet_rows() if self.file.format == "parquet" else self._csv_rows()

    def _record(self, number: int, text: object, identifier: object) -> Item:
        if text is None:
            return BadLine(number, f"field '{self.text_field}' is null")
        reason = text_problem(self.text_field, text)
        if reason:
            return BadLine(number, reason)
        if self.id_field is None:
            return Record(number, self._numbered(number), text)  # type: ignore[arg-type]
        if identifier is None:
            return BadLine(number, f"field '{self.id_field}' is null")
        reason = self._ids.check(identifier)
        return BadLine(number, reason) if reason else Record(number, identifier, text)  # type: ignore[arg-type]

    # -- Parquet ---------------------------------------------------------------------------

    @contextmanager
    def _parquet(self) -> Iterator:
        """The open file; pyarrow's errors (a corrupt or cut file) become one CorpusError."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.file.location.open_read() as raw:
            check_head(self.file.name, raw.peek(4)[:4], "parquet", False)  # type: ignore[attr-defined]
            try:
                with pq.ParquetFile(raw) as parquet:
                    yield parquet
            except (pa.ArrowException, OSError) as exc:
                raise CorpusError(f"{self.file.name}: not a readable Parquet file ({exc})") from exc

    def _parquet_rows(self) -> Iterator[Item]:
        columns = [c for c in (self.text_field, self.id_field) if c]
        with self._parquet() as parquet:
            schema = parquet.schema_arrow
            _check_columns(self.file.name, schema.names, columns)
            self._ids.kind = parquet_id_kind(self.file.name, schema, self.text_field,
                                             self.id_field)  # fmt: skip
            end = parquet.num_row_groups if self.end is None else self.end
            digest = hashlib.sha256()
            number = self.first_line - 1
            for group in range(self.start, end):
                meta = parquet.metadata.row_group(group)
                digest.update(json.dumps(meta.to_dict(), sort_keys=True, default=str).encode())
                self.bytes += meta.total_byte_size
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
                for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                    texts = batch.column(self.text_field).to_pylist()
                    ids = batch.column(self.id_field).to_pylist() if self.id_field else None
                    for i, text in enumerate(texts):
                        number += 1
                        self.lines += 1
                        yield self._record(number, text, ids[i] if ids else None)
                self.sha256 = digest.hexdigest()

    # -- CSV and TSV -----------------------------------------------------------------------

    @contextmanager
    def _csv(self) -> Iterator:
        """The csv reader over the (decompressed) file, and the header's columns. Bytes that
        are not UTF-8 are kept as surrogates, so that only their row is bad, not the file."""
        import gzip

        with self.file.location.open_read() as binary:
            check_head(self.file.name, binary.peek(4)[:4], self.file.format, self.file.gzip)  # type: ignore[attr-defined]
            hashing = _Hashing(binary)
            stream = io.BufferedReader(hashing, 1 << 16)
            source = gzip.GzipFile(fileobj=stream, mode="rb") if self.file.gzip else stream
            with (
                io.TextIOWrapper(
                    source, encoding="utf-8-sig", errors="surrogateescape", newline=""
                ) as text,  # fmt: skip
                _csv_field_limit(),
            ):
                # strict: a quote out of place is a bad row naming its line, instead of a
                # field that swallows the rows after it
                delimiter = "\t" if self.file.format == "tsv" else ","
                reader = csv.reader(text, delimiter=delimiter, strict=True)
                try:
                    header = next(reader, [])
                    yield reader, header
                except csv.Error as exc:  # the header: a quote out of place, a NUL byte
                    raise CorpusError(f"{self.file.name}: line {reader.line_num}: {exc}") from exc
                except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt .gz
                    raise CorpusError(f"{self.file.name}: {exc}") from exc
                self.bytes, self.sha256 = hashing.count, hashing.digest.hexdigest()

    def _csv_rows(self) -> Iterator[Item]:
        with self._csv() as (reader, header):
            _check_columns(self.file.name, header, [c for c in (self.text_field,
                                                                 self.id_field) if c])  # fmt: skip
            text_at = header.index(self.text_field)
            id_at = header.index(self.id_field) if self.id_field else None
            for number, row in enumerate(_rows_or_errors(reader, self.file.name), start=1):
                self.lines = number
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


def parquet_id_kind(name: str, schema, text_field: str, id_field: str | None) -> IdKind:
    """The ids' kind from the schema: text is `string`, `large_string`, `string_view` or a
    dictionary of them (pandas' Categorical); ids are integers or text."""
    import pyarrow as pa

    def values(column: str) -> pa.DataType:
        kind = schema.field(column).type
        return kind.value_type if pa.types.is_dictionary(kind) else kind

    def textual(column: str) -> bool:
        kind = values(column)
        return (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)
        )

    if not textual(text_field):
        found = schema.field(text_field).type
        raise CorpusError(f"{name}: column '{text_field}' is {found}, not text")
    if id_field is None:
        return "int"
    if pa.types.is_integer(values(id_field)):
        return "int"
    if textual(id_field):
        return "str"
    raise CorpusError(
        f"{name}: column '{id_field}' is {schema.field(id_field).type}; ids must be integers "
        "or strings"
    )


def _rows_or_errors(reader, name: str) -> Iterator[list[str] | str]:
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
                    f"{name}: line {first}: a quote opened in this row is never closed, so the "
                    f"rest of the file (to line {reader.line_num:,}) would be one field"
                ) from exc
            yield (
                f"malformed at line {reader.line_num} ({exc}): a field with a quote in it must "
                'be quoted whole, its quotes doubled ("")'
            )
