"""A run's state, and the one place that decides whether an output may be written, resumed
or replaced.

An output is a directory of parts: the output itself for a directory output, `OUTPUT.parts/`
for a single-file output (assembled from it at commit). At its start a run writes
`_state.json` there, once: its settings and its plan (a few kB, whatever the corpus's size);
a part is done when its part file exists (`part.py`: a file appears whole or not at all),
and carries its own counts. So nothing grows with the run, and a kill at any moment leaves a
state that a resumed run can trust.

- **Resume**: the settings must be the interrupted run's; the inputs are planned again and
  any file edited, appended to, removed or added since is named; each part file is read
  back (its metadata must name the planned part), and only the missing parts run.
- **Calibration** (int8 and uint8 vectors): a fresh run measures its ranges before it
  writes anything, and keeps them in `_state.json`; a resumed run uses those, so every
  part of an output is quantized alike.
- **Force**: replaces only what albert-onnx wrote: a directory holding anything else is
  refused, with or without --force.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyarrow import fs as pafs

from albert_onnx.errors import OptionError, OutputError
from albert_onnx.runtime.io.storage import Location
from albert_onnx.runtime.jobs.part import PartMeta, read_meta
from albert_onnx.runtime.jobs.plan import Part, Plan
from albert_onnx.runtime.pipeline.quantize import Ranges

STATE, MANIFEST, ERRORS = "_state.json", "_manifest.json", "_errors.jsonl"
STATE_FORMAT = 1
PART_FILE = re.compile(r"part-(\d{6})\.parquet")
_NAMES = r"(part-\d{6}\.parquet|_state\.json|_manifest\.json|_errors\.jsonl)"
OURS = re.compile(rf"{_NAMES}|\.{_NAMES}(\.[0-9a-f]{{8}})?\.tmp")  # and killed writes


def _ours(info: pafs.FileInfo) -> bool:
    return info.type == pafs.FileType.File and OURS.fullmatch(info.base_name) is not None


@dataclass
class RunState:
    directory: Location  # where the parts are
    settings: dict[str, Any]
    plan: Plan
    done: dict[int, PartMeta]  # the parts an interrupted run finished
    ranges: Ranges | None = None  # int8 and uint8 vectors: their calibrated ranges

    @property
    def resumed_parts(self) -> int:
        return len(self.done)


def open_state(
    directory: Location,
    settings: dict[str, Any],
    plan: Plan,
    *,
    resume: bool,
    force: bool,
    complete: Location,
    single: bool,
    calibrate: Callable[[], Ranges] | None = None,
) -> RunState:
    """The state of a run into DIRECTORY (see the module docstring). COMPLETE is what exists
    when the output is already complete: its manifest, or its SINGLE file (then parts
    without a state beside it are what a commit killed while cleaning up left). CALIBRATE
    measures a fresh run's ranges."""
    if resume and force:
        raise OptionError("--resume continues a run and --force replaces it: choose one")
    if resume and plan.stdin:
        raise OptionError("--resume needs files: standard input cannot be read again")
    entries = directory.entries()
    foreign = [e.base_name for e in entries if not _ours(e)]
    if foreign:
        raise OutputError(
            f"{directory} holds {', '.join(sorted(foreign)[:3])}, which albert-onnx did not "
            "write; it replaces only its own outputs: choose another output"
        )
    state_file = directory.child(STATE)
    if resume and state_file.is_file():
        return _resumed(directory, state_file, settings, plan)
    if complete.exists():
        if single:
            directory.delete()
        if resume:
            raise OutputError(
                f"{complete} is already complete: there is no interrupted run to resume "
                "(use --force to embed again)"
            )
        if not force:
            raise OutputError(f"{complete} already exists; pass --force to replace it")
    elif entries and not (force or resume):
        raise OutputError(
            f"{directory} holds an interrupted run; pass --resume to continue it or --force "
            "to start over"
        )
    ranges = calibrate() if calibrate else None  # before anything is deleted
    for entry in entries:  # ours only (checked above); with --resume, a run killed early
        directory.child(entry.base_name).delete()
    directory.make_dir()
    state = {"format": STATE_FORMAT, "settings": settings, "plan": plan.to_dict(),
             "ranges": ranges.to_dict() if ranges else None}  # fmt: skip
    state_file.write_bytes(json.dumps(state).encode())
    return RunState(directory, settings, plan, {}, ranges)


def _resumed(directory: Location, state_file: Location, settings: dict, plan: Plan) -> RunState:
    try:
        state = json.loads(state_file.read_bytes())
        fmt, old_settings = state.get("format"), dict(state["settings"])
        old_plan = Plan.from_dict(state["plan"])
        ranges = Ranges.from_dict(state["ranges"]) if state.get("ranges") else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OutputError(
            f"{state_file}: not a state this albert-onnx wrote ({exc}); use --force"
        ) from exc
    if fmt != STATE_FORMAT:
        raise OutputError(f"{directory} was written by another albert-onnx version; use --force")
    changed = sorted(
        k for k in {*old_settings, *settings} if old_settings.get(k) != settings.get(k)
    )
    if changed:
        raise OutputError(
            f"{directory}: cannot resume, {', '.join(changed)} changed since the interrupted "
            "run; use --force to start over"
        )
    changes = plan.changes_since(old_plan)
    if changes or plan.parts != old_plan.parts:
        raise OutputError(
            f"{directory}: cannot resume, the input changed since the interrupted run: "
            f"{'; '.join(changes) or 'its plan differs'}; use --force to start over"
        )
    done = {}
    for entry in directory.entries():
        if entry.base_name.startswith(".") and entry.base_name.endswith(".tmp"):
            directory.child(entry.base_name).delete()  # a write the kill cut short
            continue
        match = PART_FILE.fullmatch(entry.base_name)
        if not match:
            continue
        meta = read_meta(directory.child(entry.base_name))
        index = int(match.group(1))
        if meta is None or index >= len(plan.parts) or not _same(meta.part, plan.parts[index]):
            raise OutputError(
                f"{directory.child(entry.base_name)}: not the part this run planned (damaged, "
                "or from another run); use --force to start over"
            )
        done[index] = meta
    return RunState(directory, settings, plan, done, ranges)


def _same(found: Part, planned: Part) -> bool:
    """FOUND (as a part file records it, first line filled in) is the PLANNED part."""
    return (found.index, found.file, found.start, found.end, found.rows) == (
        planned.index, planned.file, planned.start, planned.end, planned.rows,
    )  # fmt: skip
