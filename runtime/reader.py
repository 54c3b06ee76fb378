"""Reader stage: stream a JSONL corpus line by line in constant memory.

Every line is accounted for: a record, a blank line (skipped, counted) or a bad line (an
error that names file, line and field; with on_error="skip" it is reported instead).

Ids follow one rule, so that every output format stores them exactly: a corpus's ids are
all strings or all integers in the signed 64-bit range (line numbers when there is no id
field); a line that breaks the rule is a bad line, found while reading, not after the
embedding is done.

The reader also fingerprints what it has consumed (byte count and sha256 of the lines
read so far), so that a resumed run can prove the corpus before its resume point is the
one the interrupted run embedded, and then seek straight past it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.options import OnError, check_choice
from albert_onnx.runtime.tokenizer import lone_surrogate

BOM = b"\xef\xbb\xbf"
INT64 = (-(2**63), 2**63 - 1)
MAX_ID_CHARS = 1024  # an id is a key, not a document: and .npz stores ids at the longest's width
IdKind = Literal["int", "str"]
KIND_NAMES = {"int": ("an integer", "integers"), "str": ("a string", "strings")}


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the file
    id: str | int
    text: str


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass(frozen=True)
class Blank:
    line: int


Item = Record | BadLine | Blank


@dataclass(frozen=True)
class Position:
    """How far a reader got: lines and bytes consumed, their sha256, the ids' kind."""

    lines: int = 0
    bytes: int = 0
    sha256: str = hashlib.sha256().hexdigest()
    id_kind: IdKind | None = None


class JsonlReader:
    """Iterate the items of a JSONL corpus, from the start or from a verified POSITION."""

    def __init__(
        self,
        path: str | Path,
        text_field: str = "text",
        id_field: str | None = None,
        on_error: OnError = "raise",
        start: Position | None = None,
    ) -> None:
        self.path = Path(path)
        self.text_field, self.id_field = text_field, id_field
        self.on_error = check_choice("on_error", on_error, OnError)
        self.start = start or Position(id_kind=None if id_field else "int")
        self._lines, self._bytes = self.start.lines, self.start.bytes
        self._digest = hashlib.sha256()
        self.id_kind: IdKind | None = self.start.id_kind

    def position(self) -> Position:
        """Where the items yielded so far end (a copy of the running digest: cheap)."""
        return Position(self._lines, self._bytes, self._digest.hexdigest(), self.id_kind)

    def __iter__(self) -> Iterator[Item]:
        with open(self.path, "rb") as f:
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

    def _skip_verified_prefix(self, f) -> None:
        """Hash the first START.bytes bytes and refuse to go on if they changed, or if the
        last line then read had no line end and has since been written on."""
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
        number, text_field, id_field = self._lines, self.text_field, self.id_field
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadLine(number, f"invalid UTF-8 at byte {exc.start}")
        if not line or line.isspace():  # no stripped copy of a long line
            return Blank(number)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return BadLine(number, f"invalid JSON ({exc.msg} at column {exc.colno})")
        except (ValueError, RecursionError) as exc:  # 4,300+ digit numbers, deep nesting
            return BadLine(number, f"JSON this reader will not parse ({type(exc).__name__})")
        if not isinstance(value, dict):
            return BadLine(number, f"expected a JSON object, got {type(value).__name__}")
        if text_field not in value:
            return BadLine(number, f"field '{text_field}' is missing")
        text = value[text_field]
        if not isinstance(text, str):
            return BadLine(number, f"field '{text_field}' is {type(text).__name__}, not a string")
        position = lone_surrogate(text)
        if position is not None:
            return BadLine(
                number, f"field '{text_field}' has a lone surrogate at character {position}"
            )
        if id_field is None:
            return Record(number, number, text)
        if id_field not in value:
            return BadLine(number, f"field '{id_field}' is missing")
        reason = self._check_id(value[id_field])
        return BadLine(number, reason) if reason else Record(number, value[id_field], text)

    def _check_id(self, identifier: object) -> str | None:
        """Why IDENTIFIER breaks the id rule, or None (and the corpus's id kind is set)."""
        field = self.id_field
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
        if self.id_kind is None:
            self.id_kind = kind
        elif kind != self.id_kind:
            return (
                f"field '{field}' is {KIND_NAMES[kind][0]}, but this corpus's ids are "
                f"{KIND_NAMES[self.id_kind][1]}: ids must all be strings or all integers"
            )
        return None
