"""Scale out with Ray Data: `embed_dataset` for Ray pipelines, and the corpus job behind
`albert-onnx embed --ray`.

Each worker is a Ray actor holding one `Embedder` (a callable class for `map_batches`,
`concurrency` = workers, `num_cpus` = threads per worker), built once per worker, and each
block is length-bucketed under the token budget like the single-process path. The model
directory travels through the object store, so workers need no shared file system; each
worker writes it to a private temporary directory and `Embedder` checks every file's
sha256 against the manifest before use.

The corpus job (`embed_parts`) reads the input on the driver with the single-process reader
(every format, the same id rule, bad rows and fingerprint), cuts it into parts of
`part_rows` records, and puts each part in the object store as one block. Ray Data embeds
the blocks; the driver writes each part's vectors as `part-NNNNNN.parquet` under the output
directory, through a temporary name, as the results stream back; `_manifest.json` is
written last. Exactly once: a part's rows only reach a file through its one rename, and a
worker killed mid-part is restarted by Ray (actor pools default to unlimited restarts and
task retries), its part run again. Resume: parts are deterministic (the N-th `part_rows`
records), so a rerun with `--resume` checks the input's fingerprint and the settings, and
embeds only the parts whose files are missing. Ray Data's own `write_parquet` names its
files with a per-run uuid and task index, which is why the driver writes the parts itself.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import AlbertOnnxError, OptionError, OutputError
from albert_onnx.runtime.files import atomic_write, overlap, replacing, sidecar
from albert_onnx.runtime.model_dir import ModelDir
from albert_onnx.runtime.options import (
    Dtype,
    OnError,
    check_choice,
    check_field,
    check_positive,
)
from albert_onnx.runtime.output_lock import OutputLock
from albert_onnx.runtime.reader import BadLine, Blank, Record, open_corpus
from albert_onnx.runtime.stats import Stats, count_duplicates

PART_ROWS = 4096
STATE, MANIFEST, ERRORS = "_state.json", "_manifest.json", "_errors.jsonl"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise OptionError("--ray needs Ray Data: pip install 'albert-onnx[cpu,ray]'") from exc
    return ray


def model_files(model: ModelDir) -> dict[str, bytes]:
    """Every file of the model directory, for the object store, after the graphs and the
    tokenizer were checked against the manifest here (each worker checks them again)."""
    for precision in model.manifest.variants:
        model.graph(precision)
    model.tokenizer()
    return {p.name: p.read_bytes() for p in sorted(model.directory.iterdir()) if p.is_file()}


class EmbedWorker:
    """A Ray Data worker: one Embedder, built from the model files once per actor."""

    def __init__(self, files: Any, options: dict[str, Any], text_column: str, id_column: str):
        import ray

        from albert_onnx.runtime.embedder import Embedder

        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        self.directory = Path(tempfile.mkdtemp(prefix="albert-onnx-model-"))
        for name, data in files.items():
            (self.directory / name).write_bytes(data)
        self.dtype = options.pop("dtype")
        self.embedder = Embedder(self.directory, **options)  # checks every sha256
        self.text_column, self.id_column = text_column, id_column

    def __call__(self, batch):
        """BATCH (a pyarrow Table) -> its id column, `vector` (fixed-size list), and what
        embedding each row took; a `part` column, when there is one, is kept."""
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        docs = self.embedder.tokenize(texts)
        vectors, stats = self.embedder.embed_docs(docs)
        value = pa.float16() if self.dtype == "float16" else pa.float32()
        flat = pa.array(np.ascontiguousarray(vectors, dtype=self.dtype).reshape(-1), type=value)
        columns = {
            self.id_column: batch.column(self.id_column),
            "vector": pa.FixedSizeListArray.from_arrays(flat, self.embedder.dimension),
            "tokens": pa.array([len(doc[0]) for doc in docs], type=pa.int32()),
            "truncated": pa.array([doc[0].truncated for doc in docs]),
            "unknown_script": pa.array([doc[0].mostly_unknown for doc in docs]),
            "padded_tokens": pa.array([stats.padded_tokens] * len(docs), type=pa.int64()),
        }
        if "part" in batch.column_names:
            columns = {"part": batch.column("part"), **columns}
        return pa.table(columns)


def _map(dataset, files_ref, options: dict, text_column: str, id_column: str, workers: int,
         threads: int):  # fmt: skip
    import ray

    return dataset.map_batches(
        EmbedWorker,
        fn_constructor_kwargs={
            "files": files_ref,
            "options": {**options, "threads": threads},
            "text_column": text_column,
            "id_column": id_column,
        },
        batch_size=None,  # a block is one batch: the bucketer sorts it whole
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=1 if options["provider"] == "cuda" else 0,
    )


def _embedder_options(
    provider, precision, pooling, normalize, dtype, max_batch_tokens=None, long_texts="truncate"
) -> dict[str, Any]:
    """The workers' Embedder options (the Embedder checks them again where it is built).
    A worker runs on the CPU unless CUDA is asked for, then it holds one GPU."""
    check_choice("dtype", dtype, Dtype)
    check_choice("provider", provider, Literal["cpu", "cuda"])
    if pooling == "none":
        raise OptionError("Ray output holds one vector per row: pooling 'none' is not supported")
    return {"provider": provider, "precision": precision, "pooling": pooling,
            "normalize": normalize, "max_batch_tokens": max_batch_tokens,
            "long_texts": long_texts, "dtype": dtype}  # fmt: skip


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
    dtype: Dtype = "float32",
):
    """A Ray Dataset of ID_COLUMN, `vector` (and per-row `tokens`, `truncated`,
    `unknown_script`, `padded_tokens`) for DATASET's TEXT_COLUMN, lazily: nothing runs until
    it is consumed or written. Row order follows Ray Data's `preserve_order` setting."""
    ray = _ray()
    check_positive("workers", workers)
    check_positive("threads_per_worker", threads_per_worker)
    options = _embedder_options(provider, precision, pooling, normalize, dtype)
    files = ray.put(model_files(ModelDir.open(model)))
    return _map(dataset, files, options, text_column, id_column, workers, threads_per_worker)


@dataclass(frozen=True)
class RaySummary:
    stats: Stats
    parts: int
    parts_embedded: int  # this run's: fewer than `parts` when resuming
    output: str


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
    """Embed CORPUS into OUTPUT (a directory of Parquet parts) on Ray; see the module doc."""
    start = time.perf_counter()
    ray = _ray()
    check_positive("threads_per_worker", threads_per_worker)
    check_positive("part_rows", part_rows)
    if workers is not None:
        check_positive("workers", workers)
    if resume and force:
        raise OptionError("--resume continues a run and --force replaces it: choose one")
    output, corpus = Path(output), Path(corpus)
    if output.suffix:
        raise OutputError(f"{output}: with --ray the output is a directory of Parquet parts")
    options = _embedder_options(
        provider, precision, pooling, normalize, dtype, max_batch_tokens, long_texts
    )
    check_field("text_field", text_field)
    if id_field is not None:
        check_field("id_field", id_field)
    model_dir = ModelDir.open(model)
    files = model_files(model_dir)
    reader = open_corpus(corpus, text_field, id_field, on_error)
    for name, path in (("the corpus", corpus), ("the model directory", model_dir.directory)):
        if overlap(output, path):
            raise OutputError(f"{output} would overwrite {name} ({path}); choose another output")
    lock = OutputLock(sidecar(output, ".lock"), output)
    lock.acquire()
    try:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI reports
        threads = threads_per_worker
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        settings = {
            "model_sha256": {n: v.sha256 for n, v in model_dir.manifest.variants.items()},
            "tokenizer_sha256": model_dir.manifest.tokenizer["sha256"],
            **options,
            "text_field": text_field, "id_field": id_field, "on_error": on_error,
            "part_rows": part_rows, "input_format": reader.format,
        }  # fmt: skip
        done = _open_output(output, settings, resume, force)
        parts, errors, position, stats = _read_parts(reader, part_rows, done, ray)
        _check_input(output, position)
        dataset = ray.data.from_arrow_refs([ref for _, ref in parts]) if parts else None
        embedded = 0
        if dataset is not None:
            files_ref = ray.put(files)
            results = _map(dataset, files_ref, options, "text", "id", workers, threads)
            expected = {index: rows for (index, rows), _ in parts}
            embedded = _write_parts(output, results, expected)
        return _finish(output, settings, position, stats, errors, start, embedded)
    finally:
        lock.release()


def _open_output(output: Path, settings: dict, resume: bool, force: bool) -> set[int]:
    """Parts already complete (when resuming); a fresh, empty OUTPUT otherwise."""
    state_file = output / STATE
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in {*state["settings"], *settings}
                         if state["settings"].get(k) != settings.get(k))  # fmt: skip
        if changed:
            raise OutputError(
                f"{output}: cannot resume, {', '.join(changed)} changed since the interrupted "
                "run; use --force to start over"
            )
        for stray in output.glob(".part-*.tmp"):
            stray.unlink()
        return {int(p.stem.split("-")[1]) for p in output.glob("part-*.parquet")}
    if resume and (output / MANIFEST).is_file():
        raise OutputError(f"{output} is already complete: there is no interrupted run to resume")
    if output.exists() and any(output.iterdir()) and not force:
        raise OutputError(f"{output} already exists; pass --resume to continue or --force")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    atomic_write(state_file, lambda f: f.write(json.dumps({"settings": settings}).encode()))
    return set()


def _read_parts(reader, part_rows: int, done: set[int], ray):
    """The corpus in parts of PART_ROWS records; those not DONE go to the object store."""
    import pyarrow as pa

    parts, errors, stats, buffer = [], [], Stats(), []

    def flush() -> None:
        index = (stats.docs - len(buffer)) // part_rows
        if index not in done:
            table = pa.table({"part": [index] * len(buffer), "id": [r.id for r in buffer],
                              "text": [r.text for r in buffer]})  # fmt: skip
            parts.append(((index, len(buffer)), ray.put(table)))
        buffer.clear()

    for item in reader:
        if isinstance(item, Record):
            buffer.append(item)
            stats.docs += 1
            if len(buffer) == part_rows:
                flush()
        elif isinstance(item, BadLine):
            errors.append({reader.unit: item.line, "reason": item.reason})
        elif isinstance(item, Blank):
            stats.blank_lines += 1
    if buffer:
        flush()
    stats.skipped = len(errors)
    return parts, errors, reader.position(), stats


def _check_input(output: Path, position) -> None:
    """The input's fingerprint is recorded on the first run and must match on resume."""
    path = output / "_input.json"
    now = asdict(position)
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != now:
            raise OutputError(
                f"{output}: the input changed since the interrupted run (its fingerprint "
                "differs); use --force to start over"
            )
    else:
        atomic_write(path, lambda f: f.write(json.dumps(now).encode()))


STAT_COLUMNS = ("tokens", "truncated", "unknown_script", "padded_tokens")


def _write_parts(output: Path, results, expected: dict[int, int]) -> int:
    """Write each part as its rows stream back; a part is one file (id, vector, and what
    embedding it took in the file's metadata), renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: dict[int, list] = {}
    written = 0
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for index in set(batch.column("part").to_pylist()):
            rows = batch.filter(pa.compute.equal(batch.column("part"), index))
            pending.setdefault(index, []).append(rows)
            table = pa.concat_tables(pending[index])
            if table.num_rows < expected[index]:
                continue
            del pending[index]
            took = {
                "rows": table.num_rows,
                "tokens": int(pa.compute.sum(table.column("tokens")).as_py() or 0),
                "truncated": int(pa.compute.sum(table.column("truncated")).as_py() or 0),
                "unknown_script": int(pa.compute.sum(table.column("unknown_script")).as_py() or 0),
                "padded_tokens": int(table.column("padded_tokens")[0].as_py()),
            }
            table = table.select(["id", "vector"]).replace_schema_metadata(
                {"albert_onnx": json.dumps(took)}
            )
            with replacing(output / f"part-{index:06d}.parquet") as tmp:
                pq.write_table(table, tmp)
            written += 1
    if pending:
        raise AlbertOnnxError(f"parts {sorted(pending)} came back incomplete from Ray")
    return written


def _finish(output, settings, position, stats, errors, start, embedded) -> RaySummary:
    import pyarrow.parquet as pq

    parts = sorted(output.glob("part-*.parquet"))
    totals = Stats(skipped=stats.skipped, blank_lines=stats.blank_lines)
    listed = []
    for path in parts:
        took = json.loads(pq.read_schema(path).metadata[b"albert_onnx"])
        listed.append({"file": path.name, "rows": took["rows"]})
        totals.docs += took["rows"]
        for key in ("tokens", "truncated", "unknown_script", "padded_tokens"):
            setattr(totals, key, getattr(totals, key) + took[key])
    if totals.docs != stats.docs:
        raise AlbertOnnxError(
            f"{output}: the parts hold {totals.docs:,} rows, the corpus {stats.docs:,}"
        )
    totals.duplicate_ids = count_duplicates(
        pq.read_table(p, columns=["id"]).column("id").to_pylist() for p in parts
    )
    totals.seconds = time.perf_counter() - start
    if errors:
        lines = "".join(json.dumps(e) + "\n" for e in errors)
        atomic_write(output / ERRORS, lambda f: f.write(lines.encode()))
    manifest = {
        "rows": totals.docs,
        "parts": listed,
        "settings": settings,
        "input": asdict(position),
        "stats": totals.to_dict(),
    }
    atomic_write(output / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    (output / STATE).unlink()  # after the manifest: a kill in between leaves a resumable run
    (output / "_input.json").unlink()
    return RaySummary(totals, len(parts), embedded, str(output))


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
