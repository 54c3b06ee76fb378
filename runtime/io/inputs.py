"""The inputs of a job: one or more paths or URLs, each a file, a directory or a glob,
resolved to a sorted list of files of one format, from listings alone.

- A file is read in the format its name announces: `.jsonl`, `.txt`, `.csv`, `.tsv` (each
  also `.gz`) or `.parquet`; `-` is JSONL on standard input (alone).
- A directory is every file of a known format under it, sorted by path; names starting with
  `.` or `_` (at any depth) are left out, as Spark and Hive writers expect (`_SUCCESS`,
  `.crc` files, `_temporary/`).
- A glob (`*`, `?`, `[...]`, `**` for any depth) is matched against the files under the
  directory before its first wildcard.
- One format per job: mixing JSONL and CSV, say, is refused with one sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pyarrow import fs as pafs

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.io.storage import Location, is_url, locate

STDIN = "-"
FORMATS = ("jsonl", "txt", "parquet", "csv", "tsv")
FORMAT_NAMES = {"jsonl": "JSONL", "txt": "text", "parquet": "Parquet", "csv": "CSV", "tsv": "TSV"}
GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class InputFile:
    """One input file as the plan records it: where it is, what it is, and its size and
    modification time (what resume compares)."""

    spec: str  # locate(spec) finds it: a local path or a URL with its options
    name: str  # in errors, and in ids when a job reads several files
    format: str
    gzip: bool
    size: int
    mtime_ns: int

    @property
    def location(self) -> Location:
        return locate(self.spec)

    @property
    def stdin(self) -> bool:
        return self.spec == STDIN


def input_format(name: str) -> tuple[str, bool] | None:
    """The format NAME announces, and whether it is gzip-compressed; None if none."""
    lower = name.lower()
    gzip = lower.endswith(".gz")
    stem = lower.removesuffix(".gz")
    for fmt in FORMATS:
        if stem.endswith(f".{fmt}") and not (fmt == "parquet" and gzip):
            return fmt, gzip
    return None


def _unknown(what: str) -> CorpusError:
    return CorpusError(
        f"{what}: unknown input format (use .jsonl, .txt, .csv, .tsv, each also .gz, "
        ".parquet, a directory or a glob of them, or - for JSONL on standard input)"
    )


def resolve_inputs(specs: Sequence[str]) -> list[InputFile]:
    """The files SPECS name, in order: each spec's files sorted by path."""
    if not specs:
        raise CorpusError("no input given")
    if STDIN in specs:
        if len(specs) > 1:
            raise CorpusError("standard input (-) is read alone, not with other inputs")
        return [InputFile(STDIN, STDIN, "jsonl", False, -1, 0)]
    found: list[tuple[pafs.FileInfo, Location, str]] = []
    for spec in map(str, specs):
        found += _expand(spec)
    several = len(found) > 1
    files, seen = [], set()
    for info, base, name in found:
        if (base.spec, info.path) in seen:
            raise CorpusError(f"{name}: named twice among the inputs")
        seen.add((base.spec, info.path))
        fmt, gzip = input_format(info.base_name) or (None, False)
        if fmt is None:
            raise _unknown(name)
        location = base if base.path == info.path else _child(base, info.path)
        files.append(InputFile(location.spec, name if several else location.uri, fmt, gzip,
                               info.size, info.mtime_ns or 0))  # fmt: skip
    formats = list(dict.fromkeys(f.format for f in files))  # in the order they come
    if len(formats) > 1:
        examples = ", ".join(
            f"{next(f.name for f in files if f.format == fmt)} is {FORMAT_NAMES[fmt]}"
            for fmt in formats
        )
        raise CorpusError(
            f"the inputs mix formats ({examples}); a job reads one format: embed them in "
            "separate jobs"
        )
    return files


def _child(base: Location, path: str) -> Location:
    """PATH, found under BASE: the same filesystem, the same URL options."""
    return base.child(path[len(base.path.rstrip("/")) + 1 :])


def is_glob(spec: str) -> bool:
    return GLOB.search(spec.split("://", 1)[-1].split("?", 1)[0]) is not None


def _expand(spec: str) -> list[tuple[pafs.FileInfo, Location, str]]:
    """(file info, the location it was found from, its name) for every file SPEC names."""
    if is_glob(spec):
        return _glob(spec)
    location = locate(spec)
    info = location.info()
    if info.type == pafs.FileType.File:
        return [(info, location, spec)]
    if info.type != pafs.FileType.Directory:
        raise CorpusError(f"{spec}: no such file or directory")
    entries = [
        e for e in location.entries(recursive=True)
        if e.type == pafs.FileType.File and not _hidden(_relative(location, e.path))
    ]  # fmt: skip
    known = sorted((e for e in entries if input_format(e.base_name)), key=lambda e: e.path)
    if not known:
        listed = ", ".join(sorted(_relative(location, e.path) for e in entries)[:5]) or "nothing"
        raise CorpusError(f"{spec}: no input files in this directory (it holds {listed})")
    return [(e, location, _relative(location, e.path)) for e in known]


def _glob(spec: str) -> list[tuple[pafs.FileInfo, Location, str]]:
    """Files matching SPEC's pattern under the directory before its first wildcard."""
    url, mark, query = spec.partition("?")
    if is_url(url):
        scheme, rest = url.split("://", 1)
        prefix = scheme + "://"
    else:
        prefix, rest = "", url
    head = rest[: GLOB.search(rest).start()]  # type: ignore[union-attr]
    root = head[: head.rfind("/") + 1] if "/" in head else ""
    base = locate(prefix + (root or ".") + mark + query)
    pattern = rest[len(root) :]
    deep = "**" in pattern or "/" in pattern
    entries = [e for e in base.entries(recursive=deep) if e.type == pafs.FileType.File]
    matched = sorted(
        (e for e in entries if _matches(_relative(base, e.path), pattern)), key=lambda e: e.path
    )
    if not matched:
        raise CorpusError(f"{spec}: no file matches this pattern")
    return [(e, base, root + _relative(base, e.path)) for e in matched]


def _matches(relative: str, pattern: str) -> bool:
    """RELATIVE matches PATTERN, whose `**` spans directories and `*` does not."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    regex = re.sub(r"\\\[(.*?)\\\]", lambda m: "[" + m.group(1).replace("\\", "") + "]", regex)
    return re.fullmatch(regex, relative) is not None and not _hidden(relative)


def _relative(base: Location, path: str) -> str:
    root = base.path.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))
