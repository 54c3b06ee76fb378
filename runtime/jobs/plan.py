"""The plan: a job's inputs cut into numbered parts from metadata alone (listings, file
sizes, Parquet footers), so that planning 100 GB reads kilobytes, and part N is always the
same records.

- Parquet: whole row groups, grouped up to `part_rows` rows (a row group larger than that
  is a part of its own); its rows and first row number are known from the footer.
- JSONL and text, uncompressed: byte ranges of `part_bytes`; a part's records are the lines
  that start in its range (`io/lines.py`). Its first line number is known only once the
  parts before it in the file have been read; the executors carry it along.
- CSV and TSV: one part per file (a quoted value may hold a line end: a byte offset cannot
  tell where a row starts without reading what comes before). Gzip files and standard
  input: one part each (a compressed stream cannot be entered in the middle).

The plan records each file's size and modification time: a resumed run plans again and
names any file that was edited, appended to, removed or added since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.io.inputs import InputFile, resolve_inputs
from albert_onnx.runtime.io.lines import check_head
from albert_onnx.runtime.io.records import IdKind, Numbered
from albert_onnx.runtime.io.tabular import _check_columns, parquet_id_kind
from albert_onnx.runtime.options import JobOptions


@dataclass(frozen=True)
class Part:
    """A few bytes that name a part's records: a Ray worker needs nothing else."""

    index: int
    file: int  # in Plan.files
    start: int  # the first byte (line files) or row group (Parquet)
    end: int | None  # the byte or row group it stops before; None: to the end of the file
    first_line: int | None  # its first line (row) number, where known from the plan
    rows: int | None = None  # Parquet: from the footer

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}.parquet"


@dataclass(frozen=True)
class Plan:
    files: tuple[InputFile, ...]
    parts: tuple[Part, ...]
    id_kind: IdKind | None  # known from the plan (no id field, or Parquet), else None

    @property
    def format(self) -> str:
        return self.files[0].format

    @property
    def stdin(self) -> bool:
        return self.files[0].stdin

    def numbered(self, part: Part) -> Numbered:
        """How PART's records are numbered when there is no id field."""
        return Numbered(self.files[part.file].name if len(self.files) > 1 else None)

    def to_dict(self) -> dict:
        return {
            "files": [asdict(f) for f in self.files],
            "parts": [asdict(p) for p in self.parts],
            "id_kind": self.id_kind,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            tuple(InputFile(**f) for f in data["files"]),
            tuple(Part(**p) for p in data["parts"]),
            data["id_kind"],
        )

    def changes_since(self, old: Plan) -> list[str]:
        """What differs between OLD's inputs and these: one phrase per file."""
        before = {f.spec: f for f in old.files}
        now = {f.spec: f for f in self.files}
        changes = [f"{before[s].name} was removed" for s in before if s not in now]
        changes += [f"{now[s].name} was added" for s in now if s not in before]
        for spec in before.keys() & now.keys():
            a, b = before[spec], now[spec]
            if a.size != b.size:
                grown = "appended to" if b.size > a.size else "cut"
                changes.append(f"{b.name} was {grown} ({a.size:,} -> {b.size:,} bytes)")
            elif a.mtime_ns != b.mtime_ns:
                changes.append(f"{b.name} was modified (its modification time changed)")
        return sorted(changes)


def make_plan(specs: Sequence[str], options: JobOptions) -> Plan:
    """Resolve SPECS and cut them into parts (see the module docstring)."""
    files = resolve_inputs(specs)
    if files[0].format == "txt" and options.id_field is not None:
        raise CorpusError(f"{files[0].name}: a .txt corpus has no fields; its ids are line numbers")
    parts: list[Part] = []
    kind: IdKind | None = None if options.id_field else ("int" if len(files) == 1 else "str")
    kinds: dict[IdKind, str] = {}  # Parquet id columns' kinds, each with a file of that kind
    for number, file in enumerate(files):
        if file.format == "parquet":
            found = _parquet_parts(number, file, len(parts), options)
            kinds.setdefault(found[1], file.name)
            kind = found[1] if options.id_field else kind
            parts += found[0]
        elif file.format in ("csv", "tsv"):
            _check_csv_header(file, options)
            parts.append(Part(len(parts), number, 0, None, 1))
        elif file.gzip or file.stdin:
            parts.append(Part(len(parts), number, 0, None, 1))
        else:
            parts += _byte_ranges(number, file, len(parts), options.part_bytes)
    if files[0].format in ("csv", "tsv") and options.id_field:
        kind = "str"
    if options.id_field and len(kinds) > 1:
        raise CorpusError(
            f"ids must all be strings or all integers: column '{options.id_field}' holds "
            f"integers in {kinds['int']} and strings in {kinds['str']}"
        )
    return Plan(tuple(files), tuple(parts), kind)


def _byte_ranges(number: int, file: InputFile, first: int, size: int) -> list[Part]:
    starts = range(0, max(file.size, 1), size)
    return [
        Part(first + i, number, start, min(start + size, file.size), 1 if start == 0 else None)
        for i, start in enumerate(starts)
    ]


def _parquet_parts(
    number: int, file: InputFile, first: int, options: JobOptions
) -> tuple[list[Part], IdKind]:
    """Row groups grouped up to part_rows, from the footer; the columns checked there too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with file.location.open_read() as raw:
        check_head(file.name, raw.peek(4)[:4], "parquet", False)  # type: ignore[attr-defined]
        try:
            metadata = pq.read_metadata(raw)
            schema = metadata.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{file.name}: not a readable Parquet file ({exc})") from exc
    fields = [c for c in (options.text_field, options.id_field) if c]
    _check_columns(file.name, schema.names, fields)
    kind = parquet_id_kind(file.name, schema, options.text_field, options.id_field)
    parts: list[Part] = []
    group, row = 0, 1
    while group < metadata.num_row_groups or not parts:
        start, rows = group, 0
        while group < metadata.num_row_groups:
            count = metadata.row_group(group).num_rows
            if rows and rows + count > options.part_rows:
                break
            rows, group = rows + count, group + 1
        parts.append(Part(first + len(parts), number, start, group, row, rows))
        row += rows
        if not metadata.num_row_groups:
            break
    return parts, kind


def _check_csv_header(file: InputFile, options: JobOptions) -> None:
    """The columns the job reads, from the header: a wrong column stops the job here."""
    import csv
    import gzip
    import io

    with file.location.open_read() as raw:
        check_head(file.name, raw.peek(4)[:4], file.format, file.gzip)  # type: ignore[attr-defined]
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if file.gzip else raw
        try:
            text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
            delimiter = "\t" if file.format == "tsv" else ","
            header = next(csv.reader(text, delimiter=delimiter), [])
        except (csv.Error, OSError, EOFError) as exc:
            raise CorpusError(f"{file.name}: line 1: {exc}") from exc
    fields = [c for c in (options.text_field, options.id_field) if c]
    _check_columns(file.name, header, fields)
