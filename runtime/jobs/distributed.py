"""The distributed executor (`embed --ray`): the same plan, parts and commit as the local
executor, with the parts run by Ray actors on a cluster.

The driver plans from metadata (kilobytes, whatever the corpus's size), opens the run's
state (the same code as the local executor: fresh, resumed or forced), schedules the missing
parts, and commits. It never reads the corpus's bytes and never receives a vector: each
worker, a Ray actor holding one pipeline (built once, `threads_per_worker` CPUs, a GPU each
on CUDA), reads its part's slice straight from the store (a path every node sees, or a URL
through pyarrow.fs), embeds it, writes `part-NNNNNN.parquet` straight to the output
(temporary + rename on a filesystem, one upload on object storage) and returns only the
part's metadata: its counts and bad lines. So the driver's memory and its I/O follow the
number of parts, and parts are written as soon as each is embedded.

Ray Core, not Ray Data: an actor pool over the plan's parts needs nothing of Ray Data's
blocks, operators or read stage, and gives exactly what the job needs with a scheduling
loop of our own: deterministic part names (a retried or duplicated task rewrites the same
part whole), parts given only to workers that have started (a worker the cluster cannot
place holds no part back), and retries counted per part: a worker that dies is replaced
and its part run again, up to RETRIES times, so a part that keeps killing its worker fails
the job, named, whatever the other parts cost.

What the local executor carries from part to part, a worker must be told: a byte range's
first line number (the lines before it: tasks count the line ends of those ranges first,
at I/O speed, a few at a time, and each part runs once the ranges before it in its file
are counted; a count and the part's own reading must agree) and the ids' kind (the
corpus's first id, read by a task). The commit's duplicate-id count runs as a task too,
reading the parts' id columns.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from albert_onnx.errors import AlbertOnnxError, OptionError, OutputError
from albert_onnx.runtime.io.lines import count_lines
from albert_onnx.runtime.io.records import IdKind
from albert_onnx.runtime.io.storage import locate
from albert_onnx.runtime.jobs.calibrate import calibrate
from albert_onnx.runtime.jobs.cluster import (
    RETRIES,
    WorkerModel,
    check_address,
    connect,
    on_this_node,
    ray_module,
    worker_count,
    worker_model,
)
from albert_onnx.runtime.jobs.commit import Parts, commit
from albert_onnx.runtime.jobs.local import Summary, execute, protected
from albert_onnx.runtime.jobs.output import Target
from albert_onnx.runtime.jobs.part import PartMeta, first_id_kind, run_part
from albert_onnx.runtime.jobs.plan import Part, Plan, make_plan
from albert_onnx.runtime.jobs.state import STATE, RunState, open_state
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import JobOptions, ModelOptions, check_positive
from albert_onnx.runtime.pipeline.pipeline import Pipeline, model_settings
from albert_onnx.runtime.pipeline.quantize import CALIBRATED, Ranges
from albert_onnx.runtime.stats import count_duplicates


class PartWorker:
    """A Ray actor: one pipeline, built once by `start`, running parts of one plan into one
    output. `start` is a task of its own, so that an error there (a model that cannot load,
    an output this node cannot see) reaches the driver as itself, not as a traceback in text.
    The model's files and the plan come as object-store arguments: safe, because a worker
    is never restarted by Ray (ray#53727), but replaced by the driver."""

    def __init__(self, model: WorkerModel, plan: Plan, options: ModelOptions, job: JobOptions,
                 output: str, ranges: Ranges | None) -> None:  # fmt: skip
        self.model, self.plan, self.options = model, plan, options
        self.job, self.output, self.ranges = job, locate(output), ranges

    def start(self) -> None:
        import ray

        if not self.output.child(STATE).is_file():  # the driver wrote it before any worker
            raise OutputError(
                f"{self.output}: the node at {ray.util.get_node_ip_address()} does not see "
                "this output, and workers write their parts there: use storage every node "
                "sees (a shared file system, or a URL such as s3://)"
            )
        self.pipeline = _pipeline(self.model, self.options)
        del self.model  # on disk now

    def run(self, part: Part, first_line: int, id_kind: IdKind | None) -> PartMeta:
        plan = self.plan if id_kind is None else replace(self.plan, id_kind=id_kind)
        return run_part(self.pipeline, plan, part, self.job, self.output, first_line,
                        self.ranges)  # fmt: skip


def _pipeline(model: WorkerModel, options: ModelOptions) -> Pipeline:
    """A pipeline on this node, from its copy of the model."""
    return on_this_node(model, lambda directory: Pipeline(ModelOptions(
        **{**asdict(options), "model": directory})))  # fmt: skip


def _calibrate(model: WorkerModel, options: ModelOptions, plan: Plan, job: JobOptions) -> Ranges:
    return calibrate(_pipeline(model, options), plan, job)  # a Ray task, where the model runs


def _count(plan: Plan, part: Part) -> int:  # a Ray task
    file = plan.files[part.file]
    return count_lines(file, part.start, part.end or file.size)


def _duplicates(output: str, metas: list[PartMeta], dimension: int) -> int:  # a Ray task
    return count_duplicates(Parts(locate(output), metas, dimension).ids())


def run_on_ray(
    model: ModelOptions,
    inputs: Sequence[str | Path],
    output: str | Path,
    options: JobOptions,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    address: str | None = None,
    resume: bool = False,
    force: bool = False,
) -> Summary:
    """Embed INPUTS into OUTPUT, a directory of parts, on Ray (see the module docstring).
    Without ADDRESS (or RAY_ADDRESS, or a Ray the caller started) a local instance is
    started, and shut down at the end. Provider auto is cuda where the cluster has GPUs."""
    start = time.perf_counter()
    ray = ray_module()
    check_positive("threads_per_worker", threads_per_worker)
    if workers is not None:
        check_positive("workers", workers)
    if model.provider not in ("auto", "cpu", "cuda"):
        raise OptionError(f"--ray runs on cpu or cuda workers, not {model.provider!r}")
    if model.pooling == "none":
        raise OptionError("--ray writes one vector per record: pooling 'none' is not supported")
    check_address(address)
    if address is not None and ray.is_initialized():
        raise OptionError("Ray is already started in this process: leave the address out")
    model_dir = ModelDir.open(model.model)
    specs = [str(i) for i in inputs]
    plan = make_plan(specs, options)  # a wrong file or column stops here, nothing written
    target = Target(output, ragged=False, protect=protected(plan, specs, model_dir.directory),
                    index=options.index)  # fmt: skip
    if target.single:
        raise OutputError(f"{output}: with --ray the output is a directory of Parquet parts")
    shipped = worker_model(model_dir)
    started = connect(ray, address)  # before the output exists: a failure leaves nothing
    try:
        if model.provider == "auto":
            gpus = ray.cluster_resources().get("GPU", 0)
            model = ModelOptions(**{**asdict(model), "provider": "cuda" if gpus else "cpu"})
        count = worker_count(ray, model.provider, threads_per_worker, workers, fixed=started)
        settings = {**model_settings(model_dir, model), **options.settings()}
        where = f"the Ray instance at {ray.get_runtime_context().gcs_address}"
        tasks = _Tasks(ray)
        threaded = ModelOptions(**{**asdict(model), "threads": threads_per_worker})
        with target:
            state = open_state(target.parts, settings, plan, resume=resume, force=force,
                               complete=target.complete, single=False,
                               calibrate=(lambda: tasks.ranges(shipped, threaded, plan, options))
                               if options.dtype in CALIBRATED else None)  # fmt: skip
            dimension, output_spec = settings["dimension"], target.parts.spec
            return execute(
                state,
                lambda missing: _Runner(ray, tasks, shipped, threaded, state, options,
                                        output_spec, min(count, len(missing)),
                                        threads_per_worker).run(missing),
                lambda metas: commit(
                    state, metas, None, dimension, options.dtype, False,
                    keep_errors=options.on_error == "skip",
                    duplicates=lambda parts: tasks.get(
                        tasks.duplicates.remote(output_spec, parts.metas, dimension),
                        "counting duplicate ids"),
                ),
                start, where,
            )  # fmt: skip
    finally:
        if started:  # the local instance this call started; a caller's Ray keeps running
            ray.shutdown()


class _Tasks:
    """The driver's own tasks: line counts and the first id (reading at I/O speed, so they
    hold no CPU of the workers'), the duplicate count; and what every result's arrival
    shares: an error in a task raised as itself, or named."""

    def __init__(self, ray) -> None:
        self.ray = ray
        self.count = ray.remote(num_cpus=0)(_count)
        self.first_id_kind = ray.remote(num_cpus=0)(first_id_kind)
        self.duplicates = ray.remote(num_cpus=1)(_duplicates)
        self.calibrate = ray.remote(_calibrate)

    def ranges(self, model: WorkerModel, options: ModelOptions, plan: Plan,
               job: JobOptions) -> Ranges:  # fmt: skip
        """int8/uint8 ranges, calibrated where a worker would run: the driver has no model."""
        ref = self.calibrate.options(
            num_cpus=options.threads, num_gpus=1 if options.provider == "cuda" else 0
        ).remote(model, options, plan, job)
        return self.get(ref, f"calibrating the {job.dtype} ranges")

    def get(self, ref, what: str) -> Any:
        """REF's value. A task's own error is raised as itself when it is one of ours (a bad
        line, a file that cannot be read: one sentence), else named by WHAT with its cause."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AlbertOnnxError):
                raise cause from None
            reason = f"{type(cause).__name__}: {cause}" if cause else _last_line(exc)
            raise AlbertOnnxError(f"{what}: {reason}") from exc


class _Runner:
    """The scheduling loop: workers started (and replaced when one dies), counts where
    needed, each part whose first line is known on the next free worker, in plan order."""

    def __init__(self, ray, tasks: _Tasks, model: WorkerModel, options: ModelOptions,
                 state: RunState, job: JobOptions, output: str, workers: int,
                 threads: int) -> None:  # fmt: skip
        self.ray, self.tasks, self.plan, self.done = ray, tasks, state.plan, state.done
        self.worker = ray.remote(PartWorker).options(
            num_cpus=threads, num_gpus=1 if options.provider == "cuda" else 0, max_restarts=0
        )
        self.plan_ref = ray.put(self.plan)
        self.worker_args = (ray.put(model), self.plan_ref, options, job, output, state.ranges)
        self.workers, self.job = workers, job
        self.starting: dict[Any, Any] = {}  # start task -> its worker
        self.running: dict[Any, tuple[Part, Any]] = {}  # part task -> its part and worker
        self.counting: dict[Any, Part] = {}  # count task -> its part
        self.idle: list = []

    def _start_worker(self) -> None:
        actor = self.worker.remote(*self.worker_args)
        self.starting[actor.start.remote()] = actor

    def run(self, missing: list[Part]) -> Iterator[PartMeta]:
        ray, tasks, plan = self.ray, self.tasks, self.plan
        try:
            for _ in range(self.workers):
                self._start_worker()
            id_kind = plan.id_kind or next((m.id_kind for m in self.done.values() if m.id_kind),
                                           None)  # fmt: skip
            if id_kind is None and self.job.id_field is not None:  # while the workers start
                ref = tasks.first_id_kind.remote(self.plan_ref, self.job)
                id_kind = tasks.get(ref, "reading the corpus's first id")
            yield from self._loop(missing, id_kind)
        finally:
            for ref in self.counting:
                ray.cancel(ref)
            for actor in [*self.idle, *self.starting.values(),
                          *(a for _, a in self.running.values())]:  # fmt: skip
                ray.kill(actor)  # CPUs back to the cluster, for the commit

    def _loop(self, missing: list[Part], id_kind: IdKind | None) -> Iterator[PartMeta]:
        ray, tasks, plan = self.ray, self.tasks, self.plan
        lines = {i: m.lines for i, m in self.done.items()}  # per part, where known
        first = _FirstLines(plan, lines)
        last_unknown = {p.file: p.index for p in missing if p.first_line is None}
        to_count = deque(p for p in missing if p.index < last_unknown.get(p.file, -1))
        counted: dict[int, int] = {}
        read: dict[int, int] = {}  # lines each finished part read
        ready: list[tuple[int, Part]] = []  # a heap, in plan order
        waiting: dict[int, deque[Part]] = {}  # per file, parts whose first line is unknown
        for part in missing:
            if first.of(part) is None:
                waiting.setdefault(part.file, deque()).append(part)
            else:
                heapq.heappush(ready, (part.index, part))
        tries: dict[int, int] = {}
        start_failures, left = 0, len(missing)
        while left:
            while to_count and len(self.counting) < 2 * self.workers:
                part = to_count.popleft()
                self.counting[tasks.count.remote(self.plan_ref, part)] = part
            while ready and self.idle:
                part, actor = heapq.heappop(ready)[1], self.idle.pop()
                ref = actor.run.options(name=f"albert-onnx {part.name}").remote(
                    part, first.of(part), id_kind
                )
                self.running[ref] = (part, actor)
            (ref,), _ = ray.wait([*self.counting, *self.starting, *self.running],
                                 num_returns=1)  # fmt: skip
            if ref in self.counting:
                part = self.counting.pop(ref)
                counted[part.index] = tasks.get(ref, f"counting the lines of {_where(plan, part)}")
                _agree(part, counted, read)
                lines[part.index] = counted[part.index]
                _release(part.file, waiting, first, ready)
            elif ref in self.starting:
                actor = self.starting.pop(ref)
                try:
                    tasks.get(ref, "starting a worker")
                except ray.exceptions.RayActorError as exc:
                    start_failures += 1
                    if exc.actor_init_failed or start_failures > RETRIES:
                        reason = _last_line(exc)
                        raise AlbertOnnxError(f"a worker could not start: {reason}") from exc
                    self._start_worker()
                else:
                    start_failures = 0
                    self.idle.append(actor)
            else:
                part, actor = self.running.pop(ref)
                try:
                    meta = tasks.get(ref, _where(plan, part))
                except ray.exceptions.RayActorError as exc:  # its process died: a kill, OOM
                    tries[part.index] = tries.get(part.index, 0) + 1
                    if tries[part.index] > RETRIES:
                        raise AlbertOnnxError(
                            f"{_where(plan, part)} ended its worker {RETRIES + 1} times, and "
                            "the job stops; the parts written stay, and --resume runs the rest "
                            f"({_last_line(exc)})"
                        ) from exc
                    ray.kill(actor)
                    self._start_worker()
                    heapq.heappush(ready, (part.index, part))
                    continue
                read[part.index] = meta.lines
                _agree(part, counted, read)
                lines[part.index] = meta.lines
                self.idle.append(actor)
                _release(part.file, waiting, first, ready)
                left -= 1
                yield meta


def _agree(part: Part, counted: dict[int, int], read: dict[int, int]) -> None:
    """A part's lines counted ahead and read by its worker, once both are in, are the same."""
    if part.index in counted and part.index in read and counted[part.index] != read[part.index]:
        raise OutputError(
            f"{part.name} read {read[part.index]:,} lines where {counted[part.index]:,} were "
            "counted: the input changed while the job ran"
        )


def _release(file: int, waiting: dict[int, deque[Part]], first: _FirstLines,
             ready: list[tuple[int, Part]]) -> None:  # fmt: skip
    """Make ready the parts of FILE whose first line is now known."""
    queue = waiting.get(file)
    while queue and first.of(queue[0]) is not None:
        part = queue.popleft()
        heapq.heappush(ready, (part.index, part))


class _FirstLines:
    """Each part's first line number: from the plan, or once every part before it in its
    file has a known line count (LINES, filled as counts and parts come in). Kept as a
    running prefix per file, so that asking costs nothing whatever the number of parts."""

    def __init__(self, plan: Plan, lines: dict[int, int]) -> None:
        self.lines = lines
        self.order: dict[int, list[int]] = {}  # per file: its parts in order
        self.position: dict[int, int] = {}  # per part: its place in its file
        for part in plan.parts:
            self.position[part.index] = len(self.order.setdefault(part.file, []))
            self.order[part.file].append(part.index)
        self.starts: dict[int, list[int]] = {f: [1] for f in self.order}  # first lines known

    def of(self, part: Part) -> int | None:
        if part.first_line is not None:
            return part.first_line
        order, starts = self.order[part.file], self.starts[part.file]
        while len(starts) <= self.position[part.index]:
            previous = order[len(starts) - 1]
            if previous not in self.lines:
                return None
            starts.append(starts[-1] + self.lines[previous])
        return starts[self.position[part.index]]


def _where(plan: Plan, part: Part) -> str:
    """PART, its file and where in it: what an error about it names."""
    file = plan.files[part.file]
    if part.rows is not None:
        last = part.end - 1 if part.end is not None else None
        groups = f"row group {part.start}" if last == part.start else (
            f"row groups {part.start}-{last}")  # fmt: skip
        return f"{part.name} ({file.name}, {groups})"
    if part.end is None:
        return f"{part.name} ({file.name})"
    return f"{part.name} ({file.name}, bytes {part.start:,}-{part.end - 1:,})"


def _last_line(exc: BaseException) -> str:
    """The last line of a Ray error's text: the reason, under its traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
