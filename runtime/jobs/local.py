"""The local executor: the job's parts in order, in this process, then the commit.

plan (inputs resolved and cut, before the output is touched) -> state (fresh, resumed or
forced) -> each missing part (`part.py`: read, embed a window at a time with the next
window tokenized meanwhile, write its part file whole) -> commit (`commit.py`). Running the
parts in order lets it carry along what only the parts before know: where a byte range's
first line is in its file, and the ids' kind. A kill at any moment loses at most the part
that was running; `--resume` plans again, checks, and runs only the missing parts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from albert_onnx.runtime.io.inputs import STDIN, is_glob
from albert_onnx.runtime.io.storage import locate
from albert_onnx.runtime.jobs.commit import commit
from albert_onnx.runtime.jobs.output import Target
from albert_onnx.runtime.jobs.part import run_part
from albert_onnx.runtime.jobs.plan import Plan, make_plan
from albert_onnx.runtime.jobs.state import open_state
from albert_onnx.runtime.options import JobOptions
from albert_onnx.runtime.pipeline.pipeline import OnBatch, Pipeline, coverage_warning
from albert_onnx.runtime.stats import Stats


@dataclass(frozen=True)
class Summary:
    stats: Stats  # the whole corpus's counts, the interrupted runs' included
    run: Stats  # this run's own share, and its seconds: what its rates are made of
    parts: int
    resumed_parts: int  # parts an interrupted run had finished
    outputs: list[str]


def run_job(
    pipeline: Pipeline,
    inputs: Sequence[str | Path],
    output: str | Path,
    options: JobOptions,
    *,
    resume: bool = False,
    force: bool = False,
    on_batch: OnBatch | None = None,
) -> Summary:
    """Embed every record of INPUTS into OUTPUT, in input order (see the module docstring)."""
    start = time.perf_counter()
    specs = [str(i) for i in inputs]
    plan = make_plan(specs, options)  # a wrong file or column stops here, nothing written
    protect = [("the model directory", str(pipeline.model_dir)), *_inputs(plan, specs)]
    with Target(output, ragged=pipeline.gives_token_vectors, protect=protect) as target:
        settings = {**pipeline.settings(), **options.settings()}
        if force and target.single:
            target.clear_single()
        state = open_state(target.parts, settings, plan, resume=resume, force=force,
                           complete=target.complete, single=target.single)  # fmt: skip
        metas = dict(state.done)
        before = Stats()
        for meta in metas.values():
            before.add(Stats.from_dict(meta.stats))
        next_line: dict[int, int] = {}  # per file: the line after the last part's
        id_kind = plan.id_kind
        for part in plan.parts:
            meta = metas.get(part.index)
            if meta is None:
                first_line = part.first_line or next_line[part.file]
                meta = run_part(pipeline, plan, part, options, target.parts, first_line,
                                id_kind, on_batch)  # fmt: skip
                metas[part.index] = meta
            next_line[part.file] = (meta.part.first_line or 1) + meta.lines
            id_kind = id_kind or meta.id_kind
        stats, outputs = commit(state, metas, target.location if target.single else None,
                                pipeline.dimension, options.dtype, pipeline.gives_token_vectors,
                                keep_errors=options.on_error == "skip")  # fmt: skip
    stats.seconds = time.perf_counter() - start
    run = Stats(**{k: v - getattr(before, k) for k, v in stats.to_dict().items()})
    run.duplicate_ids = stats.duplicate_ids
    run.seconds = stats.seconds
    coverage_warning(stats)
    return Summary(stats, run, len(plan.parts), state.resumed_parts, outputs)


def _inputs(plan: Plan, specs: list[str]) -> list[tuple[str, str]]:
    """What the output may not overwrite: every input file, and every directory named as an
    input (an output inside it would be read as input by the next run)."""
    found = [("the corpus", f.spec) for f in plan.files if not f.stdin]
    for spec in specs:
        if spec != STDIN and not is_glob(spec) and locate(spec).is_dir():
            found.append(("the input directory", spec))
    return found
