"""What a reader yields for every line (or row) of an input: a record, a blank line, or a bad
line that says what is wrong; the one id rule every format follows; and what the readers of
every format share (`PartReader`).

Ids follow one rule, so that every output format stores them exactly: a corpus's ids are
all strings (at most 1,024 characters, no NUL) or all integers in the signed 64-bit range;
a record that breaks the rule is a bad line, found while reading, not after the embedding.
Without an id field the id is the line (or data row) number in the file, 1 being the first;
when a job reads several files, it is `NAME:LINE`, NAME being the file's path relative to
the directory or glob that found it (as given, for a file named on its own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.pipeline.tokenizer import lone_surrogate

if TYPE_CHECKING:
    from albert_onnx.runtime.io.inputs import InputFile
    from albert_onnx.runtime.options import OnError

INT64 = (-(2**63), 2**63 - 1)
MAX_ID_CHARS = 1024  # an id is a key, not a document: and .npz stores ids at the longest's width
IdKind = Literal["int", "str"]
KIND_NAMES = {"int": ("an integer", "integers"), "str": ("a string", "strings")}


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line (or data row) number in its file
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


def text_problem(field: str, text: object) -> str | None:
    """Why TEXT cannot be embedded, or None."""
    if not isinstance(text, str):
        return f"field '{field}' is {type(text).__name__}, not a string"
    position = lone_surrogate(text)
    if position is not None:
        return f"field '{field}' has a lone surrogate at character {position}"
    return None


class IdRule:
    """The id rule: the first id sets the kind (or KIND, when a job knows it already)."""

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


class Numbered:
    """Ids of a file read without an id field: its line numbers, or `NAME:LINE` when the
    job reads several files (see the module docstring)."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.kind: IdKind = "int" if name is None else "str"

    def __call__(self, line: int) -> int | str:
        return line if self.name is None else f"{self.name}:{line}"


class PartReader:
    """What every format's reader of one part shares: where the part lies in its file
    (START and END, in the format's units; FIRST_LINE is its first line's number), the
    job's fields and error rule, and what reading consumed (`lines`, `bytes`, `sha256`,
    final once the last item is read). A format supplies `_items`."""

    def __init__(
        self,
        file: InputFile,
        start: int,
        end: int | None,
        first_line: int,
        text_field: str,
        id_field: str | None,
        on_error: OnError,
        id_kind: IdKind | None,
        numbered: Numbered,
    ) -> None:
        self.file, self.start, self.end = file, start, end
        self.first_line = first_line
        self.text_field = text_field
        self.id_field = None if file.format == "txt" else id_field  # a line is all text
        self.on_error = on_error
        self._ids = IdRule(id_field, "str" if file.format in ("csv", "tsv") else id_kind)
        self._numbered = numbered
        self.lines = self.bytes = 0
        self.sha256 = hashlib.sha256().hexdigest()

    @property
    def id_kind(self) -> IdKind | None:
        return self._numbered.kind if self.id_field is None else self._ids.kind

    def __iter__(self) -> Iterator[Item]:
        for item in self._items():
            if isinstance(item, BadLine) and self.on_error == "raise":
                raise CorpusError(f"{self.file.name}:{item.line}: {item.reason}")
            yield item

    def _items(self) -> Iterator[Item]:
        raise NotImplementedError
