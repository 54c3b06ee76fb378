"""The local executor: the job's parts in order, in this process, then the commit.

plan (inputs resolved and cut, before the output is touched) -> state (fresh, resumed or
forced) -> the missing parts, in order (`part.py`: read, embed a window at a time with the
next window, of this part or the next, read and tokenized meanwhile; each part file written
whole) -> commit (`commit.py`). Running the parts in order lets it carry along what only the
parts before know: where a byte range's first line is in its file, and the ids' kind. A kill
at any moment loses at most the part that was running; `--resume` plans again, checks, and
runs only the missing parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from albert_onnx.errors import OptionError
from albert_onnx.runtime.io.inputs import STDIN, is_glob
from albert_onnx.runtime.io.storage import locate
from albert_onnx.runtime.jobs.calibrate import calibrate
from albert_onnx.runtime.jobs.commit import commit
from albert_onnx.runtime.jobs.output import Target
from albert_onnx.runtime.jobs.part import PartMeta, run_parts
from albert_onnx.runtime.jobs.plan import Part, Plan, make_plan
from albert_onnx.runtime.jobs.state import RunState, open_state
from albert_onnx.runtime.options import JobOptions
from albert_onnx.runtime.pipeline.pipeline import OnBatch, Pipeline, coverage_warning
from albert_onnx.runtime.pipeline.quantize import CALIBRATED
from albert_onnx.runtime.stats import Stats


@dataclass(frozen=True)
class Summary:
    stats: Stats  # the whole corpus's counts, the interrupted runs' included
    run: Stats  # this run's own share, and its seconds: what its rates are made of
    parts: int
    resumed_parts: int  # parts an interrupted run had finished
    outputs: list[str]
    where: str = "this process"  # what ran the parts


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
    if pipeline.gives_token_vectors and options.dtype not in ("float32", "float16"):
        raise OptionError(f"token vectors (pooling none) are kept as floats, not {options.dtype}")
    specs = [str(i) for i in inputs]
    plan = make_plan(specs, options)  # a wrong file or column stops here, nothing written
    protect = protected(plan, specs, pipeline.model_dir)
    with Target(output, ragged=pipeline.gives_token_vectors, protect=protect,
                keep_text=options.keep_text, index=options.index) as target:  # fmt: skip
        settings = {**pipeline.settings(), **options.settings()}
        if force and target.single:
            target.clear_single()
        calibrated = options.dtype in CALIBRATED
        state = open_state(target.parts, settings, plan, resume=resume, force=force,
                           complete=target.complete, single=target.single,
                           calibrate=(lambda: calibrate(pipeline, plan, options)) if calibrated
                           else None)  # fmt: skip
        return execute(
            state,
            lambda missing: run_parts(pipeline, plan, missing, options, target.parts, on_batch,
                                      done=state.done, ranges=state.ranges),
            lambda metas: commit(state, metas, target.location if target.single else None,
                                 pipeline.dimension, options.dtype,
                                 pipeline.gives_token_vectors,
                                 keep_errors=options.on_error == "skip",
                                 keep_text=options.keep_text, index=options.index),
            start,
        )  # fmt: skip


def execute(
    state: RunState,
    run_missing: Callable[[list[Part]], Iterable[PartMeta]],
    finish: Callable[[dict[int, PartMeta]], tuple[Stats, list[str]]],
    start: float,
    where: str = "this process",
) -> Summary:
    """What every executor does with a run's state: run the parts it misses (RUN_MISSING
    gets them in plan order; how it runs them is the executor's), commit (FINISH), and tell
    this run's share of the counts from the earlier runs'."""
    metas = dict(state.done)
    before = Stats()
    for meta in metas.values():
        before.add(Stats.from_dict(meta.stats))
    missing = [part for part in state.plan.parts if part.index not in metas]
    if missing:
        for meta in run_missing(missing):
            metas[meta.part.index] = meta
    stats, outputs = finish(metas)
    stats.seconds = time.perf_counter() - start
    run = Stats(**{k: v - getattr(before, k) for k, v in stats.to_dict().items()})
    run.duplicate_ids = stats.duplicate_ids
    run.seconds = stats.seconds
    coverage_warning(stats)
    return Summary(stats, run, len(state.plan.parts), state.resumed_parts, outputs, where)


def protected(plan: Plan, specs: list[str], model_dir: Path) -> list[tuple[str, str]]:
    """What the output may not overwrite: the model directory, every input file, and every
    directory named as an input (an output inside it would be read as input next time)."""
    found = [("the model directory", str(model_dir))]
    found += [("the corpus", f.spec) for f in plan.files if not f.stdin]
    for spec in specs:
        if spec != STDIN and not is_glob(spec) and locate(spec).is_dir():
            found.append(("the input directory", spec))
    return found
