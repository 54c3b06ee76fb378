"""Scale out with Ray Data: `embed_dataset` for Ray pipelines, and the corpus job behind
`albert-onnx embed --ray` (`embed_parts`).

Each worker is a Ray actor holding one `Embedder` (a callable class for `map_batches`, an
actor pool of `workers`, `num_cpus` = threads per worker, one GPU each on CUDA), built once
per worker; each block is length-bucketed under the token budget like the single-process
path. The model directory travels through the object store, so workers need no shared file
system: a worker writes it once per node, in a directory private to its user and named by
the manifest's sha256, and `Embedder` checks every file's sha256 against the manifest
before use (a damaged copy is written again).

`embed_parts` reads the input on the driver with the single-process reader (every format,
the same id rule, bad rows and fingerprint), cuts the records into parts of `part_rows`
(the N-th part is always the same records) and puts each part in the object store as one
block; Ray Data embeds the blocks; the driver writes each part's vectors to
`part-NNNNNN.parquet` (through a temporary name, fsynced) as they stream back, and writes
`_manifest.json` last. Ray Data's own `write_parquet` names its files by run and task, not
by input block, which is why the driver writes the parts.

Exactly once: each row carries its index in the corpus; a part is written only when it
holds exactly its rows, duplicates (a retried task's second delivery) dropped, and only
once. A worker killed mid-part is restarted and its part run again (up to RETRIES times).
Resume: the settings and the input's fingerprint must match the interrupted run's, and
only the parts whose files are missing are embedded.

Not streamed: the driver reads the whole input into the object store before the workers
start, and every vector comes back through it (see README, "Scale out with Ray").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import (
    AlbertOnnxError,
    CorpusError,
    ManifestError,
    OptionError,
    OutputError,
)
from albert_onnx.runtime.io.files import atomic_write, fsync_dir, overlap, replacing, sidecar
from albert_onnx.runtime.io.inputs import STDIN
from albert_onnx.runtime.io.output_lock import OutputLock
from albert_onnx.runtime.io.records import BadLine, Blank, Record
from albert_onnx.runtime.jobs.part import iter_items, vector_column
from albert_onnx.runtime.jobs.plan import make_plan
from albert_onnx.runtime.model.manifest import MANIFEST_NAME
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import (
    Dtype,
    JobOptions,
    ModelOptions,
    OnError,
    check_choice,
    check_field,
    check_positive,
)
from albert_onnx.runtime.pipeline.session import plan
from albert_onnx.runtime.pipeline.windows import windows
from albert_onnx.runtime.stats import Stats, count_duplicates

PART_ROWS = 4096  # records per part, each one block for a Ray worker
RETRIES = 3  # restarts of a killed worker, and retries of its task, before the job fails
STATE, INPUT, MANIFEST, ERRORS = "_state.json", "_input.json", "_manifest.json", "_errors.jsonl"
TOOK = ("tokens", "truncated", "unknown_script")  # per-row counts that come back with vectors


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise OptionError("--ray needs Ray Data: pip install 'albert-onnx[cpu,ray]'") from exc
    return ray


@dataclass(frozen=True)
class WorkerModel:
    """What a worker needs to build its Embedder: the model's files, and their identity."""

    files: dict[str, bytes]
    key: str  # the manifest's sha256: one copy per node per model, whatever the restarts


def worker_model(model: ModelDir) -> WorkerModel:
    """The model directory's files, after the graphs and the tokenizer were checked against
    the manifest here (each worker checks them again)."""
    for precision in model.manifest.variants:
        model.graph(precision)
    model.tokenizer()
    files = {p.name: p.read_bytes() for p in sorted(model.directory.iterdir()) if p.is_file()}
    return WorkerModel(files, hashlib.sha256(files[MANIFEST_NAME]).hexdigest()[:32])


def _materialize(model: WorkerModel, *, rebuild: bool = False) -> Path:
    """The model as a directory on this node, shared by this user's workers: written by the
    first (under a lock, renamed into place), reused while it holds exactly the files sent,
    and replaced when REBUILD finds it damaged (a /tmp cleaner). Where no private shared
    directory can be had, a fresh one of this worker's own."""
    home = _private_home()
    if home is None:
        return _write_copy(model, Path(tempfile.mkdtemp(prefix="albert-onnx-model-")))
    target = home / f"model-{model.key}"
    with open(home / f".model-{model.key}.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, or when the worker dies
        manifest = target / MANIFEST_NAME
        current = manifest.is_file() and manifest.read_bytes() == model.files[MANIFEST_NAME]
        if current and rebuild:  # another worker may have replaced it while this one waited
            current = all(
                (target / name).is_file() and (target / name).read_bytes() == data
                for name, data in model.files.items()
            )
        if not current:
            staging = _write_copy(model, Path(tempfile.mkdtemp(prefix=".staging-", dir=home)))
            if target.exists():  # aside first: the target path is never half-written
                aside = Path(tempfile.mkdtemp(prefix=".damaged-", dir=home))
                os.replace(target, aside / "model")
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(staging, target)
    return target


def _private_home() -> Path | None:
    """$TMPDIR/albert-onnx-UID, if it is a directory of this user's that no one else can
    write (a file system that ignores modes, or someone else's directory, is not)."""
    home = Path(tempfile.gettempdir()) / f"albert-onnx-{os.getuid()}"
    try:
        home.mkdir(mode=0o700, exist_ok=True)
        info = home.lstat()
    except OSError:  # a dangling link, a read-only TMPDIR
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    return home if private and not info.st_mode & 0o077 else None


def _write_copy(model: WorkerModel, directory: Path) -> Path:
    for name, data in model.files.items():
        (directory / name).write_bytes(data)
    return directory


class EmbedWorker:
    """A Ray Data worker: one Embedder, built once per actor."""

    def __init__(self, model: Any, options: dict[str, Any], text_column: str, id_column: str):
        import ray

        from albert_onnx.runtime.embedder import Embedder

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        options = dict(options)
        self.dtype = options.pop("dtype")
        try:
            self.embedder = Embedder(_materialize(model), **options)  # checks every sha256
        except ManifestError:  # the node's copy was damaged since it was written
            self.embedder = Embedder(_materialize(model, rebuild=True), **options)
        self.text_column, self.id_column = text_column, id_column

    def __call__(self, batch):
        """BATCH (a pyarrow Table) -> its id column, `vector` (a fixed-size list) and what
        embedding each row took (`tokens`, `truncated`, `unknown_script`; `padded_tokens`,
        the batch's, on every row); `part` and `row` columns, when present, are kept."""
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        if None in texts:
            raise CorpusError(f"column '{self.text_column}' holds a null text")
        docs = self.embedder.pipeline.tokenize(texts)
        vectors, stats = self.embedder.pipeline.embed_docs(docs)
        kept = [c for c in ("part", "row") if c in batch.column_names]
        return pa.table({
            **{c: batch.column(c) for c in kept},
            self.id_column: batch.column(self.id_column),
            "vector": vector_column(vectors, self.dtype, ragged=False),
            "tokens": pa.array([sum(map(len, doc)) for doc in docs], type=pa.int32()),
            "truncated": pa.array([doc[0].truncated for doc in docs]),
            "unknown_script": pa.array([doc[0].mostly_unknown for doc in docs]),
            "padded_tokens": pa.array([stats.padded_tokens] * len(docs), type=pa.int64()),
        })  # fmt: skip


def _map(dataset, model_ref, options: dict, text_column: str, id_column: str, workers: int,
         threads: int):  # fmt: skip
    import ray

    with warnings.catch_warnings():  # for max_restarts: pyproject pins ray below 2.64
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "model": model_ref,
                "options": {**options, "threads": threads},
                "text_column": text_column,
                "id_column": id_column,
            },
            batch_size=None,  # a block is one batch: the bucketer sorts it whole
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
            num_gpus=1 if options["provider"] == "cuda" else 0,
            max_restarts=RETRIES,  # Ray Data's default is unlimited: a part that always
            max_task_retries=RETRIES,  # crashes its worker would loop forever
        )


def _embedder_options(
    model: ModelDir,
    provider: str,
    precision: str,
    pooling: str | None,
    normalize: bool | None,
    dtype: str,
    max_batch_tokens: int | None,
    long_texts: str,
) -> dict[str, Any]:
    """The workers' Embedder options, checked here on the driver (a mistake found inside an
    actor comes back as a Ray traceback, late) by the options objects every front uses,
    with the precision resolved."""
    options = ModelOptions(model.directory, provider, precision, pooling, normalize,
                           max_batch_tokens, long_texts)  # fmt: skip
    JobOptions(dtype=dtype)  # type: ignore[arg-type]
    check_choice("provider", provider, Literal["cpu", "cuda"])
    if pooling == "none":
        raise OptionError("Ray output holds one vector per row: pooling 'none' is not supported")
    variants = set(model.manifest.variants)
    resolved = plan(provider, precision, variants, cuda=provider == "cuda")[0].precision
    model.graph(resolved)  # a variant the model lacks is an error now, not in every worker
    return {"provider": options.provider, "precision": resolved, "pooling": options.pooling,
            "normalize": options.normalize, "max_batch_tokens": options.max_batch_tokens,
            "long_texts": options.long_texts, "dtype": dtype}  # fmt: skip


def embed_dataset(
    dataset,
    model: str | Path | None = None,
    text_column: str = "text",
    id_column: str = "id",
    *,
    workers: int = 1,
    threads_per_worker: int = 1,
    provider: str = "cpu",
    precision: str = "auto",
    pooling: str | None = None,
    normalize: bool | None = None,
    max_batch_tokens: int | None = None,
    long_texts: str = "truncate",
    dtype: Dtype = "float32",
):
    """A Ray Dataset of ID_COLUMN, `vector` (and per-row `tokens`, `truncated`,
    `unknown_script`, `padded_tokens`) for DATASET's TEXT_COLUMN, lazily: nothing runs until
    it is consumed or written. Row order follows Ray Data's `preserve_order` setting. Leave
    the read stage a CPU of its own (WORKERS below the cluster's CPUs): an actor pool that
    holds them all leaves Ray Data waiting for resources that never free up."""
    ray = _ray()
    check_positive("workers", workers)
    check_positive("threads_per_worker", threads_per_worker)
    directory = ModelDir.open(model)
    options = _embedder_options(directory, provider, precision, pooling, normalize, dtype,
                                max_batch_tokens, long_texts)  # fmt: skip
    schema = dataset.schema(fetch_if_missing=False)
    if schema is not None:
        for column in (text_column, id_column):
            if column not in schema.names:
                raise OptionError(f"the dataset has no column '{column}' ({schema.names})")
    model_ref = ray.put(worker_model(directory))  # starts Ray, if the dataset has not
    _worker_count(ray, provider, threads_per_worker, workers, fixed=False)
    return _map(dataset, model_ref, options, text_column, id_column, workers, threads_per_worker)


@dataclass(frozen=True)
class RaySummary:
    stats: Stats  # the whole corpus, parts embedded earlier included
    run: Stats  # this run's parts, and its seconds: what its rates are made of
    parts: int
    parts_embedded: int  # by this run: fewer than `parts` when resuming
    output: str
    cluster: str  # the GCS address of the Ray instance that ran it


def embed_parts(
    corpus: str | Path,
    output: str | Path,
    model: str | Path | None = None,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: OnError = "raise",
    dtype: Dtype = "float32",
    provider: str = "cpu",
    precision: str = "auto",
    pooling: str | None = None,
    normalize: bool | None = None,
    max_batch_tokens: int | None = None,
    long_texts: str = "truncate",
    workers: int | None = None,
    threads_per_worker: int = 1,
    part_rows: int = PART_ROWS,
    address: str | None = None,
    resume: bool = False,
    force: bool = False,
) -> RaySummary:
    """Embed CORPUS into OUTPUT (a directory of Parquet parts) on Ray; see the module doc.
    Without ADDRESS (and without a Ray already started by the caller) a local Ray instance
    is started."""
    start = time.perf_counter()
    ray = _ray()
    check_positive("threads_per_worker", threads_per_worker)
    check_positive("part_rows", part_rows)
    check_field("text_field", text_field)
    if id_field is not None:
        check_field("id_field", id_field)
    if workers is not None:
        check_positive("workers", workers)
    if resume and force:
        raise OptionError("--resume continues a run and --force replaces it: choose one")
    _check_address(address)
    if address is not None and ray.is_initialized():
        raise OptionError("Ray is already started in this process: leave the address out")
    output, corpus = Path(output), Path(corpus)
    if output.suffix:
        raise OutputError(f"{output}: with --ray the output is a directory of Parquet parts")
    if resume and str(corpus) == STDIN:
        raise CorpusError("--resume needs a file: standard input cannot be read again")
    model_dir = ModelDir.open(model)
    options = _embedder_options(model_dir, provider, precision, pooling, normalize, dtype,
                                max_batch_tokens, long_texts)  # fmt: skip
    records, input_format, fingerprint = _records(
        corpus, JobOptions(text_field, id_field, on_error, dtype)
    )
    for name, path in (("the corpus", corpus), ("the model directory", model_dir.directory)):
        if str(path) != STDIN and overlap(output, path):
            raise OutputError(f"{output} would overwrite {name} ({path}); choose another output")
    model_files = worker_model(model_dir)
    started = _connect(ray, address)  # before the output exists: a failure leaves nothing
    lock = OutputLock(sidecar(output, ".lock"), output)
    try:
        count = _worker_count(ray, provider, threads_per_worker, workers, fixed=started)
        lock.acquire()
        settings = {
            "model": model_files.key, **options, "text_field": text_field,
            "id_field": id_field, "on_error": on_error, "part_rows": part_rows,
            "input_format": input_format,
        }  # fmt: skip
        done = _completed_parts(output, settings, resume, force)
        parts, errors, stats = _read_parts(records, part_rows, done, ray)
        _prepare_output(output, settings, fresh=not (resume and (output / STATE).is_file()))
        _check_input(output, fingerprint)
        embedded, run = 0, Stats()
        if parts:
            model_ref = ray.put(model_files)
            dataset = ray.data.from_arrow_refs([ref for _, _, ref in parts])
            results = _map(dataset, model_ref, options, "text", "id", min(count, len(parts)),
                           threads_per_worker)  # fmt: skip
            expected = {index: rows for index, rows, _ in parts}
            embedded, run = _write_parts(output, results, expected)
        run.seconds = time.perf_counter() - start
        return _finish(output, settings, fingerprint, stats, errors, run, embedded)
    finally:
        try:
            lock.release()
        finally:
            if started:  # the local instance this call started; a caller's Ray keeps running
                ray.shutdown()


def _connect(ray, address: str | None) -> bool:
    """Ray as the caller started it; else the cluster at ADDRESS, or at RAY_ADDRESS (which
    `ray job submit` sets for its entrypoint); else a new local instance. True when this
    started a local instance: its nodes are fixed, and it is this job's to shut down."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        address = None  # the Jobs API's address (for `ray job submit`), not one to init with
    _check_address(address)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    except (ConnectionError, ValueError) as exc:  # ValueError: an address Ray cannot parse
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        cause = f" ({' '.join(str(exc.__cause__).split())})" if exc.__cause__ else ""
        hint = (
            ". A cluster whose `ray start` enabled token authentication needs "
            "RAY_AUTH_MODE=token and its token here too"
            if isinstance(exc, ConnectionError) and address else ""
        )  # fmt: skip
        raise OptionError(f"cannot connect to {where}: {exc}{cause}{hint}") from exc
    return address in (None, "local")


def _check_address(address: str | None) -> None:
    if address is not None and address.startswith("ray://"):
        raise OptionError(  # ray-project/ray#48682: Ray Data needs a driver inside the cluster
            "Ray Data does not run over Ray Client (ray://): run albert-onnx on a node of the "
            "cluster with --ray-address auto, or send it there with `ray job submit`"
        )


def _worker_count(ray, provider: str, threads: int, workers: int | None, *, fixed: bool) -> int:
    """WORKERS, or as many as the Ray nodes hold now (each needs THREADS CPUs, and a GPU on
    CUDA). Workers that no node can hold leave Ray Data waiting for them: refused where the
    nodes are FIXED (a local instance); on a cluster, where an autoscaler may add nodes, a
    warning says what the job waits for."""

    def holds(resources: dict) -> int:
        by_cpu = int(resources.get("CPU", 0)) // threads
        return min(by_cpu, int(resources.get("GPU", 0))) if provider == "cuda" else by_cpu

    fits = sum(holds(node["Resources"]) for node in ray.nodes() if node["Alive"])
    wanted = workers or max(1, fits)
    if wanted > fits:
        each = f"{threads} CPUs{' and a GPU' if provider == 'cuda' else ''}"
        message = f"the Ray nodes hold {fits} worker(s) of {each}, not {wanted}"
        if fixed:
            raise OptionError(f"{message}: lower --workers or --threads-per-worker")
        warnings.warn(f"{message} now: the job waits for nodes to join", stacklevel=3)
    return wanted


def _completed_parts(output: Path, settings: dict, resume: bool, force: bool) -> set[int]:
    """The parts an interrupted run completed (when resuming); empty for a new run. Changes
    nothing: whatever is refused, here or while reading the input, leaves OUTPUT as it was."""
    state_file = output / STATE
    if resume and state_file.is_file():
        try:
            old = dict(json.loads(state_file.read_text(encoding="utf-8"))["settings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"{state_file}: not a state this albert-onnx wrote") from exc
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        if changed:
            raise OutputError(
                f"{output}: cannot resume, {', '.join(changed)} changed since the interrupted "
                "run; use --force to start over"
            )
        return {int(p.stem.split("-")[1]) for p in output.glob("part-*.parquet")}
    if resume and (output / MANIFEST).is_file():
        raise OutputError(f"{output} is already complete: there is no interrupted run to resume")
    if output.is_dir() and any(output.iterdir()):
        if not _is_ray_output(output):
            raise OutputError(
                f"{output} is not an albert-onnx --ray output, which is all --ray replaces: "
                "remove it yourself or choose another output"
            )
        if not (resume or force):  # resume: killed before its state was written, so anew
            raise OutputError(f"{output} already exists; pass --resume to continue or --force")
    elif output.exists() and not output.is_dir():
        raise OutputError(f"{output} exists and is not a directory")
    return set()


_NAMES = r"(part-\d{6}\.parquet|_state\.json|_input\.json|_manifest\.json|_errors\.jsonl)"
RAY_OUTPUT = re.compile(rf"{_NAMES}|\.{_NAMES}\.tmp")  # the files, and their temporaries


def _is_ray_output(output: Path) -> bool:
    """Whether every entry of OUTPUT is a file that an `embed --ray` run writes."""
    return all(
        p.is_file() and not p.is_symlink() and RAY_OUTPUT.fullmatch(p.name)
        for p in output.iterdir()
    )


def _prepare_output(output: Path, settings: dict, *, fresh: bool) -> None:
    """A new run's empty OUTPUT with its state; a resumed run's without stray temporaries."""
    if not fresh:
        for stray in output.glob(".part-*.tmp"):
            stray.unlink()
        return
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    atomic_write(output / STATE, lambda f: f.write(json.dumps({"settings": settings}).encode()))


def _records(corpus: str | Path, options: JobOptions):
    """The corpus's items as the local job reads them (its plan, its readers, part after
    part on the driver), its format, and its fingerprint (the planned files' sizes and
    modification times)."""
    plan = make_plan([str(corpus)], options)
    return iter_items(plan, options), plan.format, [asdict(f) for f in plan.files]


def _read_parts(records, part_rows: int, done: set[int], ray):
    """The corpus in parts of PART_ROWS records, cut as the single-process job cuts its
    windows (bad and blank lines do not count); those not DONE go to the object store, with
    each record's index in the corpus."""
    import pyarrow as pa

    parts, errors, stats = [], [], Stats()
    for window in windows(records, part_rows, counts=lambda named: isinstance(named[1], Record)):
        items = [item for _, item in window]
        records_ = [item for item in items if isinstance(item, Record)]
        errors += [{"file": name, "line": i.line, "reason": i.reason}
                   for name, i in window if isinstance(i, BadLine)]  # fmt: skip
        stats.blank_lines += sum(isinstance(item, Blank) for item in items)
        first, stats.docs = stats.docs, stats.docs + len(records_)
        index = first // part_rows  # every part but the last holds PART_ROWS records
        if records_ and index not in done:
            table = pa.table({
                "part": [index] * len(records_), "row": list(range(first, stats.docs)),
                "id": [r.id for r in records_], "text": [r.text for r in records_],
            })  # fmt: skip
            parts.append((index, len(records_), ray.put(table)))
    stats.skipped = len(errors)
    return parts, errors, stats


def _check_input(output: Path, fingerprint: list) -> None:
    """The input's fingerprint is recorded on the first run and must match on resume."""
    path, now = output / INPUT, fingerprint
    if path.is_file():
        if json.loads(path.read_text(encoding="utf-8")) != now:
            raise OutputError(
                f"{output}: the input changed since the interrupted run (its fingerprint "
                "differs); use --force to start over"
            )
    else:
        atomic_write(path, lambda f: f.write(json.dumps(now).encode()))


def _write_parts(output: Path, results, expected: dict[int, int]) -> tuple[int, Stats]:
    """Write each part once it holds exactly its rows (a row delivered twice, by a retried
    task, is kept once), as `id` and `vector`, with what embedding it took in the file's
    metadata; each file is fsynced and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: dict[int, list] = {}
    written, run = set(), Stats()
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for index in set(batch.column("part").to_pylist()):
            if index in written:
                continue
            pending.setdefault(index, []).append(
                batch.filter(pa.compute.equal(batch.column("part"), index))
            )
            table = pa.concat_tables(pending[index])
            _, first = np.unique(table.column("row").to_numpy(), return_index=True)
            if len(first) < expected[index]:
                continue
            table = table.take(pa.array(first))  # one of each row, in corpus order
            del pending[index]
            took = {
                "rows": table.num_rows,
                **{k: int(pa.compute.sum(table.column(k)).as_py() or 0) for k in TOOK},
                "padded_tokens": table.column("padded_tokens")[0].as_py(),  # a part: one batch
            }
            table = table.select(["id", "vector"]).replace_schema_metadata(
                {"albert_onnx": json.dumps(took)}
            )
            target = output / f"part-{index:06d}.parquet"
            with replacing(target) as tmp:
                pq.write_table(table, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            written.add(index)
            run.add(_took_stats(took))
    if pending:
        raise AlbertOnnxError(f"parts {sorted(pending)} came back incomplete from Ray")
    fsync_dir(output)
    return len(written), run


def _took_stats(took: dict) -> Stats:
    return Stats(
        docs=took["rows"],
        tokens=took["tokens"],
        truncated=took["truncated"],
        unknown_script=took["unknown_script"],
        padded_tokens=took["padded_tokens"],
    )


def _finish(output, settings, fingerprint, stats, errors, run, embedded) -> RaySummary:
    import pyarrow.parquet as pq
    import ray

    parts = sorted(output.glob("part-*.parquet"))
    totals = Stats(skipped=stats.skipped, blank_lines=stats.blank_lines, seconds=run.seconds)
    listed = []
    for path in parts:
        took = json.loads(pq.read_schema(path).metadata[b"albert_onnx"])
        listed.append({"file": path.name, "rows": took["rows"]})
        totals.add(_took_stats(took))
    if totals.docs != stats.docs:
        raise AlbertOnnxError(
            f"{output}: the parts hold {totals.docs:,} rows, the corpus {stats.docs:,}"
        )
    totals.duplicate_ids = count_duplicates(
        pq.read_table(p, columns=["id"]).column("id").to_pylist() for p in parts
    )
    if errors:
        lines = "".join(json.dumps(e) + "\n" for e in errors)
        atomic_write(output / ERRORS, lambda f: f.write(lines.encode()))
    manifest = {
        "rows": totals.docs,
        "parts": listed,
        "settings": settings,
        "input": fingerprint,
        "stats": totals.to_dict(),
    }
    atomic_write(output / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    (output / STATE).unlink()  # after the manifest: a kill in between leaves a resumable run
    (output / INPUT).unlink()
    cluster = ray.get_runtime_context().gcs_address
    return RaySummary(totals, run, len(parts), embedded, str(output), cluster)


def iter_vectors(output: str | Path) -> Iterator[tuple[list, np.ndarray]]:
    """Read a complete --ray output back, part by part: (ids, vectors)."""
    import pyarrow.parquet as pq

    output = Path(output)
    if not (output / MANIFEST).is_file():
        raise OutputError(f"{output}: no {MANIFEST}, so the output is not complete")
    manifest = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
    for part in manifest["parts"]:
        table = pq.read_table(output / part["file"], columns=["id", "vector"])
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        yield table.column("id").to_pylist(), vectors
