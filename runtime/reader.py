"""Reader stage: stream a JSONL corpus line by line in constant memory.

Every line is accounted for: a record, a blank line (skipped, counted) or a bad line
(an error that names file, line and field; with on_error="skip" it is reported instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BOM = b"\xef\xbb\xbf"
OnError = Literal["raise", "skip"]


class CorpusError(ValueError):
    """A line of the corpus that cannot be embedded: `FILE:LINE: what is wrong`."""


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


def read_jsonl(
    path: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: OnError = "raise",
    start_after_line: int = 0,
) -> Iterator[Item]:
    """Yield one item per line of PATH after START_AFTER_LINE (for resuming)."""
    path = Path(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number <= start_after_line:
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            item = _parse(raw, number, text_field, id_field)
            if isinstance(item, BadLine) and on_error == "raise":
                raise CorpusError(f"{path}:{item.line}: {item.reason}")
            yield item


def _parse(raw: bytes, number: int, text_field: str, id_field: str | None) -> Item:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(number, f"invalid UTF-8 at byte {exc.start}")
    if not line.strip():
        return Blank(number)
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return BadLine(number, f"expected a JSON object, got {type(value).__name__}")
    if text_field not in value:
        return BadLine(number, f"field '{text_field}' is missing")
    text = value[text_field]
    if not isinstance(text, str):
        return BadLine(number, f"field '{text_field}' is {type(text).__name__}, not a string")
    if id_field is None:
        return Record(number, number, text)
    if id_field not in value:
        return BadLine(number, f"field '{id_field}' is missing")
    identifier = value[id_field]
    if isinstance(identifier, bool) or not isinstance(identifier, str | int):
        return BadLine(
            number, f"field '{id_field}' is {type(identifier).__name__}, not a string or integer"
        )
    return Record(number, identifier, text)
