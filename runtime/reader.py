"""Reader stage: stream a corpus record by record in constant memory, whatever its format.

`open_corpus` picks the reader by the file's name and checks that the content agrees (a
gzip file named `.jsonl`, a Parquet file named `.csv` get one sentence saying so):

- `.jsonl`, `.jsonl.gz`, and `-` (JSONL on standard input): one JSON object per line;
- `.txt`, `.txt.gz`: one text per line, the line number is the id;
- `.parquet`, `.csv`, `.tsv` (and `.csv.gz`, `.tsv.gz`): `tabular.py` (Parquet with pyarrow,
  CSV and TSV with the csv module).

Every line (or row) is accounted for: a record, a blank line (skipped, counted) or a bad
line (an error that names file, line or row, and field; with on_error="skip" it is
reported instead).

Ids follow one rule, so that every output format stores them exactly: a corpus's ids are
all strings (at most 1,024 characters, no NUL) or all integers in the signed 64-bit range
(line or row numbers when there is no id field); a record that breaks the rule is a bad
line, found while reading, not after the embedding is done.

The reader also fingerprints what it has consumed, so that a resumed run can prove the
corpus before its resume point is the one the interrupted run embedded. Line-based files
record the byte count and sha256 of the lines read so far (appending lines stays allowed;
resuming reads and hashes that prefix again before going on); tabular files cannot be cut
by bytes, so their fingerprint is the whole file's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.options import OnError, check_choice
from albert_onnx.runtime.tokenizer import lone_surrogate

BOM = b"\xef\xbb\xbf"
INT64 = (-(2**63), 2**63 - 1)
MAX_ID_CHARS = 1024  # an id is a key, not a document: and .npz stores ids at the longest's width
IdKind = Literal["int", "str"]
KIND_NAMES = {"int": ("an integer", "integers"), "str": ("a string", "strings")}
STDIN = "-"
MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive"}


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line (or row) number in the file
    id: str | int
    text: str


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str

    def error(self) -> dict[str, int | str]:
        """Its entry in an errors file: `line` is the line of a JSONL or text file, the data
        row (1 = the first after the header) of a CSV, TSV or Parquet file."""
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class Blank:
    line: int


Item = Record | BadLine | Blank


@dataclass(frozen=True)
class Position:
    """How far a reader got: lines (rows) and bytes consumed, their sha256, the ids' kind.
    For tabular files, bytes and sha256 are the whole file's."""

    lines: int = 0
    bytes: int = 0
    sha256: str = hashlib.sha256().hexdigest()
    id_kind: IdKind | None = None


class Reader(Protocol):
    path: Path
    start: Position
    id_kind: IdKind | None
    format: str

    def __iter__(self) -> Iterator[Item]: ...
    def position(self) -> Position: ...
    def resume_from(self, start: Position) -> None: ...


class IdRule:
    """The one id rule, for every format: the first id sets the corpus's kind."""

    def __init__(self, field: str | None, kind: IdKind | None) -> None:
        self.field = field
        self.kind: IdKind | None = kind

    def check(self, identifier: object) -> str | None:
        """Why IDENTIFIER breaks the rule, or None (and the corpus's id kind is set)."""
        field = self.field
        if isinstance(identifier, bool) or not isinstance(identifier, str | int):
            return f"field '{field}' is {type(identifier).__name__}, not a string or integer"
        if isinstance(identifier, int) and not INT64[0] <= identifier <= INT64[1]:
            return f"field '{field}' is {identifier}, outside the signed 64-bit integer range"
        if isinstance(identifier, str):
            if lone_surrogate(identifier) is not None:
                return f"field '{field}' has a lone surrogate"
            if "\x00" in identifier:  # fixed-width unicode arrays (.npz) drop trailing NULs
                return f"field '{field}' contains a NUL character"
            if len(identifier) > MAX_ID_CHARS:
                return (
                    f"field '{field}' is {len(identifier):,} characters long "
                    f"(at most {MAX_ID_CHARS:,})"
                )
        kind: IdKind = "int" if isinstance(identifier, int) else "str"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            return (
                f"field '{field}' is {KIND_NAMES[kind][0]}, but this corpus's ids are "
                f"{KIND_NAMES[self.kind][1]}: ids must all be strings or all integers"
            )
        return None


def text_problem(field: str, text: object) -> str | None:
    """Why TEXT cannot be embedded, or None."""
    if not isinstance(text, str):
        return f"field '{field}' is {type(text).__name__}, not a string"
    position = lone_surrogate(text)
    if position is not None:
        return f"field '{field}' has a lone surrogate at character {position}"
    return None


def input_format(path: Path) -> str:
    """The format a corpus's name announces: jsonl, txt, parquet, csv or tsv."""
    if str(path) == STDIN:
        return "jsonl"
    name = path.name.lower().removesuffix(".gz")
    for fmt in ("jsonl", "txt", "parquet", "csv", "tsv"):
        if name.endswith(f".{fmt}"):
            if fmt == "parquet" and path.name.lower().endswith(".gz"):
                break
            return fmt
    raise CorpusError(
        f"{path}: unknown input format (use .jsonl, .jsonl.gz, .txt, .parquet, .csv, .tsv, "
        "or - for JSONL on standard input)"
    )


def _check_content(path: Path, fmt: str) -> None:
    """One sentence when the bytes disagree with the name, not 'invalid UTF-8 at byte 1'."""
    with open(path, "rb") as f:
        head = f.read(4)
    found = next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)
    gzipped = path.name.lower().endswith(".gz")
    if fmt == "parquet":
        if head != b"PAR1":
            raise CorpusError(f"{path}: not a Parquet file (it does not start with PAR1)")
    elif gzipped and found != "gzip-compressed":
        raise CorpusError(f"{path}: named .gz but not gzip-compressed")
    elif not gzipped and found is not None:
        hint = {"gzip-compressed": f"; name it {path.name}.gz", "a Parquet file":
                "; name it .parquet"}.get(found, "")  # fmt: skip
        raise CorpusError(f"{path}: the file is {found}, not {fmt.upper()} text{hint}")


def open_corpus(
    path: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: OnError = "raise",
    start: Position | None = None,
) -> Reader:
    """The reader for PATH's format, positioned at START (verified) if resuming."""
    path = Path(path)
    check_choice("on_error", on_error, OnError)
    fmt = input_format(path)
    if str(path) == STDIN:
        if start is not None and start.lines:
            raise CorpusError("standard input cannot be resumed: it cannot be read again")
        return LineReader(path, fmt, text_field, id_field, on_error, None)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if fmt == "txt" and id_field is not None:
        raise CorpusError(f"{path}: a .txt corpus has no fields; its ids are line numbers")
    _check_content(path, fmt)
    if fmt in ("parquet", "csv", "tsv"):
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise CorpusError(
                f"{path}: reading .{fmt} needs pyarrow: pip install 'albert-onnx[parquet]'"
            ) from exc
        from albert_onnx.runtime.tabular import TabularReader

        return TabularReader(path, fmt, text_field, id_field, on_error, start)
    return LineReader(path, fmt, text_field, id_field, on_error, start)


class LineReader:
    """JSONL or plain text, one record per line, from a file (gzip or not) or stdin."""

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
        plain_ids = id_field is None or fmt == "txt"
        self.resume_from(start or Position(id_kind="int" if plain_ids else None))

    def resume_from(self, start: Position) -> None:
        """Continue after START; the prefix is checked against it when reading begins."""
        self.start = start
        self._lines, self._bytes = start.lines, start.bytes
        self._digest = hashlib.sha256()
        self._ids = IdRule(self.id_field, start.id_kind)

    @property
    def id_kind(self) -> IdKind | None:
        return self._ids.kind

    def position(self) -> Position:
        """Where the items yielded so far end (a copy of the running digest: cheap)."""
        return Position(self._lines, self._bytes, self._digest.hexdigest(), self.id_kind)

    def _open(self) -> BinaryIO:
        if str(self.path) == STDIN:
            head = sys.stdin.buffer.peek(4)[:4]
            found = next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)
            if found:
                raise CorpusError(f"standard input is {found}, not JSONL text")
            return sys.stdin.buffer
        if self.path.name.lower().endswith(".gz"):
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        return open(self.path, "rb")

    def __iter__(self) -> Iterator[Item]:
        try:
            with self._open() as f:
                self._skip_verified_prefix(f)
                for raw in f:
                    self._lines += 1
                    self._bytes += len(raw)
                    self._digest.update(raw)
                    if self._lines == 1 and raw.startswith(BOM):
                        raw = raw[len(BOM) :]
                    item = self._parse(raw)
                    if isinstance(item, BadLine) and self.on_error == "raise":
                        raise CorpusError(f"{self.path}:{item.line}: {item.reason}")
                    yield item
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut or corrupt .gz
            raise CorpusError(
                f"{self.path}: the gzip stream is broken after line {self._lines:,} ({exc})"
            ) from exc

    def _skip_verified_prefix(self, f: BinaryIO) -> None:
        """Hash the first START.bytes bytes (of the decompressed stream, for gzip) and refuse
        to go on if they changed, or if the last line then read had no line end and has
        since been written on."""
        remaining, last = self.start.bytes, b"\n"
        while remaining:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            self._digest.update(block)
            remaining -= len(block)
            last = block[-1:]
        if remaining or self._digest.hexdigest() != self.start.sha256:
            raise CorpusError(
                f"{self.path}: changed since the interrupted run: its first "
                f"{self.start.bytes:,} bytes (lines 1-{self.start.lines:,}) are not the ones "
                "embedded then; use --force to start over"
            )
        if last != b"\n" and f.read(1):
            raise CorpusError(
                f"{self.path}: changed since the interrupted run: line {self.start.lines:,} "
                "had no line end when it was embedded and more was written after it; use "
                "--force to start over"
            )

    def _parse(self, raw: bytes) -> Item:
        number = self._lines
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadLine(number, f"invalid UTF-8 at byte {exc.start}")
        if not line or line.isspace():  # no stripped copy of a long line
            return Blank(number)
        if self.format == "txt":
            return Record(number, number, line.rstrip("\r\n"))
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
            return Record(number, number, text)
        if self.id_field not in value:
            return BadLine(number, f"field '{self.id_field}' is missing")
        reason = self._ids.check(value[self.id_field])
        return BadLine(number, reason) if reason else Record(number, value[self.id_field], text)
