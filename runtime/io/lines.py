"""Line inputs: JSONL (one JSON object per line) and plain text (one text per line), from a
local file, object storage, or standard input; gzip-compressed or not.

A part of an uncompressed file is a byte range, and its records are the lines that *start*
in the range (the Hadoop split rule): a reader of [start, end) steps back one byte and
skips through the first line end, so a line cut by `start` belongs to the range before,
and it reads on past `end` to finish the last line it started. Every line is read by
exactly one part, wherever the boundaries fall: mid-line, between CR and LF, inside a
multi-byte character, before a last line without a line end. A gzip file, or standard
input, is one part.

Every line is accounted for: a record, a blank line (skipped, counted) or a bad line (which
names file, line and field; with on_error="skip" it is reported instead). The bytes a part
consumed (from its first line to the end of its last) are counted and hashed as it reads.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.io.inputs import STDIN, InputFile
from albert_onnx.runtime.io.records import (
    BadLine,
    Blank,
    Item,
    PartReader,
    Record,
    text_problem,
)

BOM = b"\xef\xbb\xbf"
MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive"}


def check_head(name: str, head: bytes, fmt: str, gzipped: bool) -> None:
    """One sentence when a file's first bytes disagree with its name, not 'invalid UTF-8 at
    byte 1'."""
    found = next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)
    if name == STDIN:
        if found:
            raise CorpusError(f"standard input is {found}, not JSONL text")
    elif fmt == "parquet":
        if head != b"PAR1":
            raise CorpusError(f"{name}: not a Parquet file (it does not start with PAR1)")
    elif gzipped and found != "gzip-compressed":
        raise CorpusError(f"{name}: named .gz but not gzip-compressed")
    elif not gzipped and found is not None:
        base = name.rsplit("/", 1)[-1]
        hint = {"gzip-compressed": f"; name it {base}.gz", "a Parquet file":
                "; name it .parquet"}.get(found, "")  # fmt: skip
        raise CorpusError(f"{name}: the file is {found}, not {fmt.upper()} text{hint}")


class LineReader(PartReader):
    """The lines of FILE that start in byte range [START, END) (END None: to the end)."""

    def _open(self) -> BinaryIO:
        file = self.file
        if file.stdin:
            check_head(STDIN, sys.stdin.buffer.peek(4)[:4], "jsonl", False)
            return sys.stdin.buffer
        raw = file.location.open_read()
        try:
            if self.start == 0:
                check_head(file.name, raw.peek(4)[:4], file.format, file.gzip)  # type: ignore[attr-defined]
            if file.gzip:
                return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
            if self.start > 0:  # the line cut by START belongs to the part before
                raw.seek(self.start - 1)
                raw.readline()
        except BaseException:
            raw.close()
            raise
        return raw

    def _items(self) -> Iterator[Item]:
        digest = hashlib.sha256()
        try:
            with self._open() as f:
                position = f.tell() if not (self.file.stdin or self.file.gzip) else 0
                for raw in f:
                    if self.end is not None and position >= self.end:
                        break
                    position += len(raw)
                    self.lines += 1
                    self.bytes += len(raw)
                    digest.update(raw)
                    if self.lines == 1 and self.start == 0 and raw.startswith(BOM):
                        raw = raw[len(BOM) :]
                    yield self._parse(raw, self.first_line + self.lines - 1)
            self.sha256 = digest.hexdigest()
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut or corrupt .gz
            raise CorpusError(
                f"{self.file.name}: the gzip stream is broken after line {self.lines:,} ({exc})"
            ) from exc

    def _parse(self, raw: bytes, number: int) -> Item:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadLine(number, f"invalid UTF-8 at byte {exc.start}")
        if not line or line.isspace():  # no stripped copy of a long line
            return Blank(number)
        if self.file.format == "txt":
            return Record(number, self._numbered(number), line.rstrip("\r\n"))
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return BadLine(number, f"invalid JSON ({exc.msg} at column {exc.colno})")
        except (ValueError, RecursionError) as exc:  # 4,300+ digit numbers, deep nesting
            return BadLine(number, f"JSON this reader will not parse ({type(exc).__name__})")
        if not isinstance(value, dict):
            return BadLine(number, f"expected a JSON object, got {type(value).__name__}")
        if self.text_field not in value:
            return BadLine(number, f"field '{self.text_field}' is missing")
        text = value[self.text_field]
        reason = text_problem(self.text_field, text)
        if reason:
            return BadLine(number, reason)
        if self.id_field is None:
            return Record(number, self._numbered(number), text)
        field = self.id_field
        if field not in value:
            return BadLine(number, f"field '{field}' is missing")
        reason = self._ids.check(value[field])
        return BadLine(number, reason) if reason else Record(number, value[field], text)


def count_lines(file: InputFile, start: int, end: int) -> int:
    """How many lines start in [START, END) of an uncompressed FILE, by the split rule the
    readers follow, counting line ends a block at a time: what tells a part of a file
    where its first line is without reading the parts before it."""
    end = min(end, file.size)
    with file.location.open_read() as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()
        first = f.tell()
        if first >= end:
            return 0
        count, position = 1, first  # the line that starts at FIRST
        while position < end - 1:
            block = f.read(min(1 << 20, end - 1 - position))
            if not block:
                break
            count += block.count(b"\n")
            position += len(block)
        return count
