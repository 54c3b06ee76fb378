"""Commit: once every part exists, check them against the plan, count, and finish the output.

- A directory output gets `_errors.jsonl` (with --on-error skip) and then `_manifest.json`,
  last: rows, parts, summed counts, settings, the inputs' and model's fingerprints. A
  directory without a manifest is incomplete, and `open_output` refuses it.
- A single-file output (.npy, .npz, .parquet, .jsonl) is assembled from the parts in one
  streaming pass (sidecars first, the output last), and the parts are removed after it. Its
  manifest, without the parts, is the sidecar `OUTPUT.manifest.json`.

Either manifest says what made the vectors (the model's fingerprint and the settings: what
`search` checks a model against) and, for int8 and uint8 vectors, their calibrated ranges.

Every record read once: Parquet parts against their planned rows, a line file's byte
ranges against its size. Duplicate ids are counted exactly over every part in bounded
memory (`stats.py`), from the id columns alone. Ids of different kinds in different parts,
which the readers prevent (the first id sets the kind), would fail the commit naming both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from albert_onnx.errors import CorpusError, OutputError
from albert_onnx.runtime.io.formats import Chunk, write_ids_jsonl, write_output
from albert_onnx.runtime.io.storage import Location, locate
from albert_onnx.runtime.jobs.part import PartMeta, read_column, read_part
from albert_onnx.runtime.jobs.state import ERRORS, MANIFEST, STATE, RunState
from albert_onnx.runtime.pipeline.quantize import storage
from albert_onnx.runtime.stats import Stats, count_duplicates

MANIFEST_FORMAT = 1


@dataclass
class Parts:
    """A finished run's part files, read back in input order (`formats.Rows`)."""

    directory: Location
    metas: list[PartMeta]
    width: int  # values per stored vector (the dimension, or its bytes for packed bits)

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.metas)

    @property
    def vector_rows(self) -> int:
        return sum(m.vector_rows for m in self.metas)

    def chunks(self) -> Iterator[Chunk]:
        for meta in self.metas:
            if meta.rows:
                yield from read_part(self.directory.child(meta.part.name), self.width)

    def ids(self) -> Iterator[list]:
        yield from self._column("id")

    def texts(self) -> Iterator[list]:
        """The texts (--keep-text), a list per chunk of `chunks()`."""
        yield from self._column("text")

    def _column(self, name: str) -> Iterator[list]:
        for meta in self.metas:
            if meta.rows:
                yield from read_column(self.directory.child(meta.part.name), name)


def commit(
    state: RunState,
    metas: dict[int, PartMeta],
    single: Location | None,
    dimension: int,
    dtype: str,
    ragged: bool,
    keep_errors: bool,
    duplicates: Callable[[Parts], int] = lambda parts: count_duplicates(parts.ids()),
    keep_text: bool = False,
    index: bool = False,
) -> tuple[Stats, list[str]]:
    """Finish the run whose parts are METAS (see the module docstring); the corpus's counts
    and the files written. DUPLICATES counts the duplicate ids of the parts (here, by
    default; where the parts are, for a distributed run)."""
    plan, directory = state.plan, state.directory
    missing = [p.name for p in plan.parts if p.index not in metas]
    if missing:
        raise OutputError(f"{directory}: parts {', '.join(missing[:3])} are missing")
    ordered = [metas[p.index] for p in plan.parts]
    _check_coverage(state, ordered)
    id_kind = _one_id_kind(state, ordered)
    stats = Stats()
    for meta in ordered:
        stats.add(Stats.from_dict(meta.stats))
    numpy_dtype, width = storage(dtype, dimension)
    parts = Parts(directory, ordered, width)
    stats.duplicate_ids = duplicates(parts)
    errors = [error for meta in ordered for error in meta.errors]
    manifest = _manifest(state, parts, stats)
    if single is None:
        written = _finish_directory(state, parts, manifest, errors if keep_errors else None)
    else:
        written = _finish_single(single, parts, manifest, numpy_dtype, id_kind,
                                 ragged, errors if keep_errors else None, keep_text,
                                 index)  # fmt: skip
        directory.child(STATE).delete()  # first: parts without a state are never resumed
        directory.delete()
    return stats, written


def _check_coverage(state: RunState, metas: list[PartMeta]) -> None:
    """Every record read once: a Parquet part read the rows its plan counted, and the byte
    ranges of a line file together read the file's every byte (each the lines that start in
    it). Else the input changed while the job ran."""
    plan, consumed = state.plan, {}
    for part, meta in zip(plan.parts, metas, strict=True):
        if part.rows is not None and meta.lines != part.rows:
            raise OutputError(
                f"{state.directory.child(part.name)} holds {meta.lines:,} rows, its plan "
                f"{part.rows:,}: the input changed while the job ran; use --force"
            )
        if part.end is not None and part.rows is None:  # a byte range
            consumed[part.file] = consumed.get(part.file, 0) + meta.bytes
    for number, read in consumed.items():
        file = plan.files[number]
        if read != file.size:
            raise OutputError(
                f"{file.name}: its parts read {read:,} bytes of its {file.size:,}: the input "
                "changed after the job started; use --force"
            )


def _one_id_kind(state: RunState, metas: list[PartMeta]) -> str:
    kinds = {m.id_kind: m for m in reversed(metas) if m.id_kind}
    if len(kinds) > 1:
        where = ", ".join(
            f"{state.plan.files[m.part.file].name} ({'integers' if k == 'int' else 'strings'})"
            for k, m in sorted(kinds.items())
        )
        raise CorpusError(f"ids must all be strings or all integers, and they are not: {where}")
    return next(iter(kinds), state.plan.id_kind or "int")


def _manifest(state: RunState, parts: Parts, stats: Stats) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "rows": parts.rows,
        "settings": state.settings,
        "ranges": state.ranges.to_dict() if state.ranges else None,
        "inputs": [asdict(f) for f in state.plan.files],
        # what the vectors are, not how long they took: the same input gives the same bytes
        "stats": {k: v for k, v in stats.to_dict().items() if k != "seconds"},
    }


def _finish_directory(
    state: RunState, parts: Parts, manifest: dict[str, Any], errors: list | None
) -> list[str]:
    directory = state.directory
    written = []
    if errors is not None:
        directory.child(ERRORS).write_bytes("".join(json.dumps(e) + "\n" for e in errors).encode())
        written.append(str(directory.child(ERRORS)))
    manifest = {
        **manifest,
        "parts": [
            {
                "file": m.part.name,
                "rows": m.rows,
                "input": state.plan.files[m.part.file].name,
                "lines": m.lines,
                "bytes": m.bytes,
                "sha256": m.sha256,
            }
            for m in parts.metas
        ],
    }
    directory.child(MANIFEST).write_bytes(json.dumps(manifest, indent=2).encode())
    directory.child(STATE).delete()  # after the manifest: a kill between leaves a resumable run
    directory.sync()
    return [str(directory), *written]


def _finish_single(
    output: Location, parts: Parts, manifest: dict[str, Any], dtype: np.dtype, id_kind: str,
    ragged: bool, errors: list | None, keep_text: bool, index: bool,
) -> list[str]:  # fmt: skip
    manifest_file = output.sibling(output.name + ".manifest.json")
    manifest_file.write_bytes(json.dumps(manifest, indent=2).encode())
    written = [manifest_file]
    if output.name.endswith(".npy"):
        ids_file = output.sibling(output.name + ".ids.jsonl")
        ids_file.write_atomic(lambda f: write_ids_jsonl(f, parts))
        written.append(ids_file)
    if errors is not None:
        errors_file = output.sibling(output.name + ".errors.jsonl")
        errors_file.write_bytes("".join(json.dumps(e) + "\n" for e in errors).encode())
        written.append(errors_file)
    write_output(output, parts, dtype, parts.width, id_kind, ragged, keep_text, index)
    return [str(p) for p in (output, *written)]


def open_output(spec: str) -> tuple[dict[str, Any], Parts]:
    """A complete directory output, for reading it back: its manifest and its parts. One
    without a manifest is incomplete, and refused."""
    from albert_onnx.runtime.jobs.part import read_meta

    directory = locate(spec)
    manifest_file = directory.child(MANIFEST)
    if not manifest_file.is_file():
        raise OutputError(f"{directory}: no {MANIFEST}, so the output is not complete")
    manifest = json.loads(manifest_file.read_bytes())
    metas = []
    for entry in manifest["parts"]:
        meta = read_meta(directory.child(entry["file"]))
        if meta is None or meta.rows != entry["rows"]:
            raise OutputError(f"{directory.child(entry['file'])}: not the part the manifest lists")
        metas.append(meta)
    settings = manifest["settings"]
    width = storage(settings.get("dtype", "float32"), int(settings["dimension"]))[1]
    return manifest, Parts(directory, metas, width)
