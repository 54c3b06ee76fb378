"""The `albert-onnx` command line. Export is imported lazily so runtime-only installs work."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, get_args

import typer
from rich.console import Console
from rich.table import Table

from albert_onnx.errors import AlbertOnnxError, CorpusError, ManifestError
from albert_onnx.runtime.model.manifest import verified_file
from albert_onnx.runtime.options import Dtype, LongTexts, OnError, Pooling, Precision, Provider
from albert_onnx.runtime.options import JobOptions as Job
from albert_onnx.runtime.options import ModelOptions as Model
from albert_onnx.serve.config import ServeConfig as Serve

SHORT_OP = {
    "MultiHeadAttention": "MHA",
    "SkipLayerNormalization": "SkipLN",
    "EmbedLayerNormalization": "EmbedLN",
    "LayerNormalization": "LN",
}
ModelOption = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped model).")
]
ProviderOption = Annotated[Provider, typer.Option(help="Where to run: auto, cpu or cuda.")]
# typer takes Literal choices, but not in a list option: this enum is the same choices
Variant = Enum("Variant", {p: p for p in get_args(Precision) if p != "auto"}, type=str)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


@contextmanager
def reported() -> Iterator[None]:
    """albert-onnx's errors, and the OS's (one line naming the path), end the command with
    exit status 1; warnings print as one line. Anything else is a bug: its traceback stays."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except AlbertOnnxError as exc:
            raise fail(str(exc)) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from exc


@app.command()
def export(
    model: Annotated[
        str, typer.Argument(help="Checkpoint directory or hub id.")
    ] = "albert-base-v2",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Model directory to write.")
    ] = Path("models/albert-base-v2"),
    quantize: Annotated[bool, typer.Option(help="Also write INT8 model.int8.onnx (CPU).")] = False,
    fp16: Annotated[bool, typer.Option(help="Also write fused model.fp16.onnx (CUDA).")] = False,
    fp32: Annotated[
        bool, typer.Option(help="Keep model.onnx; --no-fp32 ships only INT8/fp16, smaller.")
    ] = True,
    pooling: Annotated[
        Literal["mean", "cls", "max"] | None,
        typer.Option(help="Default pooling (default: the checkpoint's, else mean)."),
    ] = None,
    normalize: Annotated[bool | None, typer.Option(help="Default L2 normalisation.")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Export an ALBERT checkpoint to a self-contained ONNX model directory."""
    try:
        from albert_onnx.export.exporter import export_model
    except ImportError as exc:
        raise fail(
            f"export needs the export extra: pip install 'albert-onnx[export,cpu]' ({exc})"
        ) from exc
    start = time.perf_counter()
    with reported():
        manifest = export_model(
            model,
            output,
            quantize=quantize,
            fp16=fp16,
            keep_fp32=fp32,
            force=force,
            pooling=pooling,
            normalize=normalize,
            revision=revision,
            log=lambda step: err.print(f"[dim]{step}[/]"),
        )
    out.print(f"wrote {output} in {time.perf_counter() - start:.1f} s")
    _print_variants(output, manifest)


@app.command()
def info(model_dir: Annotated[Path, typer.Argument(help="Model directory.")]) -> None:
    """Describe a model directory and the execution providers that work on this machine."""
    from albert_onnx.errors import ProviderError
    from albert_onnx.runtime.model.model_dir import ModelDir
    from albert_onnx.runtime.pipeline.providers import installed_runtimes
    from albert_onnx.runtime.pipeline.session import open_session

    with reported():
        model = ModelDir.open(model_dir)
        manifest = model.manifest
        arch = manifest.architecture
        out.print(f"[bold]{model_dir}[/]  source: {manifest.source}")
        out.print(
            f"ALBERT V={arch['vocab_size']} E={arch['embedding_size']} H={arch['hidden_size']} "
            f"layers={arch['num_hidden_layers']} heads={arch['num_attention_heads']}; "
            f"tokenizer {manifest.tokenizer['kind']} max_length={manifest.max_length}; "
            f"pooling {manifest.pooling}{' + L2' if manifest.normalize else ''}"
        )
        _print_variants(model_dir, manifest)
        runtimes = installed_runtimes()
        out.print(f"onnxruntime installs: {', '.join(runtimes) or 'none'}")
        if len(runtimes) > 1:
            err.print(
                "[yellow]both onnxruntime and onnxruntime-gpu are installed; they overwrite "
                "each other. pip uninstall -y onnxruntime onnxruntime-gpu, then install one.[/]"
            )
        try:
            cuda = open_session(model, "cuda").placement.precision
            out.print(f"working providers: CPUExecutionProvider, CUDAExecutionProvider ({cuda})")
        except ProviderError as exc:
            out.print("working providers: CPUExecutionProvider", highlight=False)
            out.print(f"CUDA not usable: {exc}", highlight=False)


@app.command()
def calibrate(
    model_dir: Annotated[Path, typer.Argument(help="Model directory to record the ranges in.")],
    inputs: Annotated[list[str], typer.Argument(help="A corpus: files, directories, globs.")],
    text_field: Annotated[str, typer.Option(help="Field or column holding the text.")] = (
        Job.text_field
    ),
    texts: Annotated[int, typer.Option(help="Records the ranges are measured on.")] = (
        Job.calibration_texts
    ),
    provider: ProviderOption = Model.provider,
    precision: Annotated[Precision, typer.Option(help="Graph variant.")] = Model.precision,
) -> None:
    """Record int8/uint8 ranges in a model directory: what serve and embed quantize with."""
    with reported():
        from albert_onnx.runtime.jobs.calibrate import record
        from albert_onnx.runtime.pipeline.pipeline import Pipeline

        options = Job(text_field=text_field, calibration_texts=texts)
        pipeline = Pipeline(Model(model_dir, provider, precision))
        ranges = record(pipeline, inputs, options)
    out.print(f"recorded the int8/uint8 ranges of the {pipeline.precision} graph's vectors in "
              f"{model_dir}, measured on {ranges.source}", highlight=False)  # fmt: skip


@app.command()
def embed(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Files, directories or globs, local or URLs (s3://, gs://, hdfs://, file://), "
            "of one format: .jsonl, .txt, .csv, .tsv (each also .gz), .parquet; - for JSONL "
            "on standard input.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help=".npy, .npz, .parquet or .jsonl for one file; any other name: a directory of "
            "Parquet parts with a manifest (local or a URL).",
        ),
    ],
    model: ModelOption = Model.model,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text.")] = (
        Job.text_field
    ),
    id_field: Annotated[
        str | None,
        typer.Option(
            help="Field or column holding the id, all strings or all integers (default: the "
            "line number; FILE:LINE for several files)."
        ),
    ] = Job.id_field,
    provider: ProviderOption = Model.provider,
    precision: Annotated[Precision, typer.Option(help="Graph variant.")] = Model.precision,
    pooling: Annotated[
        Pooling | None, typer.Option(help="Pooling (default: the model's); none: token vectors.")
    ] = Model.pooling,
    normalize: Annotated[
        bool | None, typer.Option(help="L2-normalise (default: the model's).")
    ] = Model.normalize,
    max_batch_tokens: Annotated[
        int | None, typer.Option(help="Padded tokens per batch (default: by provider).")
    ] = Model.max_batch_tokens,
    long_texts: Annotated[
        LongTexts, typer.Option(help="truncate, or chunk: mean of overlapping windows.")
    ] = Model.long_texts,
    dtype: Annotated[
        Dtype,
        typer.Option(
            help="Vectors in the output: float32, float16; int8, uint8 (ranges calibrated on "
            "the corpus's first records, or --calibration); binary, ubinary (packed bits)."
        ),
    ] = Job.dtype,
    calibration: Annotated[
        str | None,
        typer.Option(help="int8/uint8: calibrate the ranges on this file's first records."),
    ] = Job.calibration,
    calibration_texts: Annotated[
        int, typer.Option(help="int8/uint8: records the ranges are measured on.")
    ] = Job.calibration_texts,
    keep_text: Annotated[
        bool,
        typer.Option(help="Keep each text beside its vector (.parquet, .jsonl, .lance, parts)."),
    ] = Job.keep_text,
    index: Annotated[
        bool, typer.Option("--index", help="A .lance output: build an ANN index (IVF_PQ).")
    ] = Job.index,
    on_error: Annotated[
        OnError, typer.Option(help="raise: stop at a bad line; skip: log it and go on.")
    ] = Job.on_error,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default and maximum: cores available).")
    ] = Model.threads,
    device_id: Annotated[int | None, typer.Option(help="CUDA device index.")] = Model.device_id,
    window_texts: Annotated[
        int, typer.Option(help="Texts sorted by length together (a part file's row group).")
    ] = Job.window_texts,
    part_rows: Annotated[
        int, typer.Option(help="Parquet inputs: rows per part (whole row groups).")
    ] = Job.part_rows,
    part_bytes: Annotated[
        int, typer.Option(help="JSONL and text inputs: bytes of input per part.")
    ] = Job.part_bytes,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run the parts on a Ray cluster (a directory output).")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="A Ray cluster to run on (auto, HOST:PORT); default: a local one."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="--ray: workers (default: the cluster's CPUs / threads).")
    ] = None,
    threads_per_worker: Annotated[int, typer.Option(help="--ray: CPU threads per worker.")] = 1,
) -> None:
    """Embed a corpus; vectors are written in input order with their ids."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    ray_only = {
        "--ray-address": ray_address is not None,
        "--workers": workers is not None,
        "--threads-per-worker": threads_per_worker != 1,
    }
    single_only = {"--threads": threads is not None, "--device-id": device_id is not None}
    misplaced = [name for name, given in (single_only if ray else ray_only).items() if given]
    if misplaced:
        raise fail(f"{', '.join(misplaced)} {'do not apply with' if ray else 'need'} --ray")
    with reported():  # before the model loads: a wrong option stops here
        options = Job(text_field, id_field, on_error, dtype, window_texts, part_rows, part_bytes,
                      calibration, calibration_texts, keep_text, index)  # fmt: skip
    if ray:
        with reported():
            from albert_onnx.runtime.jobs.distributed import run_on_ray

            done = run_on_ray(
                Model(model, provider, precision, pooling, normalize, max_batch_tokens,
                      long_texts),
                inputs, output, options,
                workers=workers, threads_per_worker=threads_per_worker, address=ray_address,
                resume=resume, force=force,
            )  # fmt: skip
        _print_summary(done.stats, done.run)
        embedded = done.parts - done.resumed_parts
        out.print(
            f"wrote {done.parts:,} part{'' if done.parts == 1 else 's'} ({embedded:,} "
            f"embedded by this run) and the manifest to {output}, on {done.where}",
            highlight=False,
        )
        return

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(
            "{task.completed:,} docs  {task.fields[docs_s]:,.0f} docs/s  "
            "{task.fields[tokens_s]:,.0f} tokens/s"
        ),
        TimeElapsedColumn(),
    )
    with reported():
        from albert_onnx.runtime.jobs.local import run_job
        from albert_onnx.runtime.pipeline.pipeline import Pipeline

        model_options = Model(
            model, provider, precision, pooling, normalize, max_batch_tokens, long_texts,
            threads, device_id,
        )  # fmt: skip
        pipeline = Pipeline(model_options)
        err.print(f"[dim]{pipeline.model_dir}: {pipeline.precision} on {pipeline.provider}[/]")
        with Progress(*columns, console=err, disable=not progress) as bar:
            task = bar.add_task("embedding", total=None, docs_s=0.0, tokens_s=0.0)
            start, seen = time.perf_counter(), {"tokens": 0}

            def on_batch(docs: int, tokens: int, _padded: int) -> None:
                seen["tokens"] += tokens
                elapsed = max(time.perf_counter() - start, 1e-9)
                done = bar.tasks[0].completed + docs
                bar.update(
                    task, advance=docs, docs_s=done / elapsed, tokens_s=seen["tokens"] / elapsed
                )

            summary = run_job(pipeline, inputs, output, options, resume=resume, force=force,
                              on_batch=on_batch)  # fmt: skip
    _print_summary(summary.stats, summary.run)
    if summary.resumed_parts:
        out.print(f"resumed: {summary.resumed_parts:,} of {summary.parts:,} parts were done",
                  highlight=False)  # fmt: skip
    out.print(f"wrote {', '.join(summary.outputs)}", highlight=False)


def _print_summary(stats, run) -> None:
    out.print(
        f"{stats.docs:,} docs, {stats.tokens:,} tokens ({run.tokens_per_s:,.0f} tokens/s), "
        f"padding overhead {stats.padding_overhead:.1%}, truncated {stats.truncated:,}, "
        f"skipped {stats.skipped:,}, blank lines {stats.blank_lines:,}, "
        f"duplicate ids {stats.duplicate_ids:,}, mostly unknown tokens "
        f"{stats.unknown_script:,}, {stats.seconds:.1f} s",
        highlight=False,
    )


@app.command()
def search(
    output: Annotated[str, typer.Argument(help="An output of `embed` (any format, or a URL).")],
    query: Annotated[list[str] | None, typer.Argument(help="Texts to search for.")] = None,
    queries: Annotated[
        str | None,
        typer.Option(help="A file of queries: one per line, or JSONL (CSV, Parquet) records."),
    ] = None,
    text_field: Annotated[str, typer.Option(help="--queries: the queries' field.")] = "text",
    k: Annotated[int, typer.Option("-k", "--k", help="Hits per query.")] = 10,
    rescore: Annotated[
        int | None,
        typer.Option(help="binary/ubinary: re-rank this many best by the float query."),
    ] = None,
    exact: Annotated[
        bool, typer.Option("--exact", help="An indexed .lance output: scan, not the index.")
    ] = False,
    model: ModelOption = None,
    provider: ProviderOption = Model.provider,
    json_lines: Annotated[
        bool, typer.Option("--json", help='One line per hit: {"query", "rank", "id", "score"}.')
    ] = False,
) -> None:
    """Find the rows of an output nearest to queries, embedded by the model that made it."""
    import json
    from dataclasses import asdict

    from rich.markup import escape

    with reported():
        from albert_onnx.runtime.search.search import read_queries, search_output

        texts = list(query or []) + (read_queries(queries, text_field) if queries else [])
        found = search_output(output, texts, k, rescore=rescore, model=model, provider=provider,
                              exact=exact)  # fmt: skip
    for text, hits in zip(texts, found, strict=True):
        if json_lines:
            for hit in hits:
                typer.echo(json.dumps(asdict(hit)))
            continue
        table = Table(title=escape(text[:80]), title_justify="left")
        for column in ("rank", "id", "score"):
            table.add_column(column, justify="right" if column != "id" else "left")
        for hit in hits:
            table.add_row(str(hit.rank), escape(str(hit.id)), f"{hit.score:.4f}")
        out.print(table)


@app.command()
def bench(
    model: ModelOption = None,
    provider: ProviderOption = "auto",
    precision: Annotated[
        list[Variant] | None,
        typer.Option(help="Variant(s) to time (default: the two meant for the provider)."),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(help="An input to time on, as embed reads it (default: built-in texts)."),
    ] = None,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text.")] = (
        Job.text_field
    ),
    texts: Annotated[int, typer.Option(help="How many texts to time.")] = 512,
) -> None:
    """Time each model variant on this machine (tokens/s end to end), to choose one."""
    from albert_onnx.runtime.bench import bench as run_bench
    from albert_onnx.runtime.bench import sample_texts
    from albert_onnx.runtime.io.records import Record
    from albert_onnx.runtime.jobs.part import iter_items
    from albert_onnx.runtime.jobs.plan import make_plan
    from albert_onnx.runtime.options import check_positive

    with reported():
        check_positive("texts", texts)
        if corpus is None:
            sample = sample_texts(texts)
        else:
            options = Job(text_field=text_field)
            items = iter_items(make_plan([corpus], options), options)
            records = (item for _, item in items if isinstance(item, Record))
            sample = [r.text for r in itertools.islice(records, texts)]
            if not sample:
                raise CorpusError(f"{corpus}: no texts to time")
        table = Table("provider", "variant", "batching", "tokens/s", "docs/s", "padding",
                      "start s")  # fmt: skip
        chosen = [p.value for p in precision] if precision else None
        for row in run_bench(model, sample, provider, chosen):
            s = row.stats
            table.add_row(row.provider, row.precision, row.batching, f"{s.tokens_per_s:,.0f}",
                          f"{s.docs_per_s:,.1f}", f"{s.padding_overhead:.1%}",
                          f"{row.start_seconds:.2f}")  # fmt: skip
    out.print(f"{len(sample)} texts, end to end (tokenization included), one warm-up pass each")
    out.print(table)


@app.command()
def serve(
    model: ModelOption = Model.model,
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind (keep 127.0.0.1 unless a proxy or load balancer fronts it)."
        ),
    ] = Serve.host,
    port: Annotated[
        int, typer.Option(help="Port (0: any free one, printed at start).")
    ] = Serve.port,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ALBERT_ONNX_API_KEY",
            help="Require 'Authorization: Bearer KEY' (or set ALBERT_ONNX_API_KEY).",
        ),
    ] = Serve.api_key,
    provider: ProviderOption = Model.provider,
    precision: Annotated[
        Precision,
        typer.Option(help="Graph variant; fp32 for vectors that do not depend on other traffic."),
    ] = Model.precision,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: cores available).")
    ] = Model.threads,
    device_id: Annotated[int | None, typer.Option(help="CUDA device index.")] = Model.device_id,
    max_batch_tokens: Annotated[
        int | None, typer.Option(help="Padded tokens per batch (default: by provider).")
    ] = Model.max_batch_tokens,
    max_queue_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens waiting before new requests get 429 (default: "
            "8 batches, at least one full request)."
        ),
    ] = Serve.max_queue_tokens,
    max_inputs_per_request: Annotated[
        int, typer.Option(help="Inputs per request (413 past it).")
    ] = Serve.max_inputs_per_request,
    max_wait_ms: Annotated[
        float, typer.Option(help="Longest an idle engine waits for more requests to batch.")
    ] = Serve.max_wait_ms,
    max_body_bytes: Annotated[
        int, typer.Option(help="Request body limit (413 past it).")
    ] = Serve.max_body_bytes,
    truncate: Annotated[
        bool,
        typer.Option(
            help="Truncate inputs over the model's max length; --no-truncate answers 422 instead."
        ),
    ] = Serve.truncate,
    isolate_requests: Annotated[
        bool, typer.Option(help="Run each request alone: no batching across requests (slower).")
    ] = Serve.isolate_requests,
    drain_seconds: Annotated[
        float, typer.Option(help="On SIGTERM, how long requests in flight may take to finish.")
    ] = Serve.drain_seconds,
    drain_min_seconds: Annotated[
        float,
        typer.Option(
            help="On SIGTERM, answer 503 at least this long (a load balancer's "
            "check interval) before exiting."
        ),
    ] = Serve.drain_min_seconds,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name clients send (default: the directory's name).")
    ] = Serve.served_model_name,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Open connections at most; past it a new one closes the one waiting longest "
            "for its request (default: 2048, or what the open-file limit leaves room for)."
        ),
    ] = Serve.max_connections,
    request_timeout: Annotated[
        float,
        typer.Option(help="Seconds for a whole request (headers, body) to arrive (408 past it)."),
    ] = Serve.request_timeout,
    keep_alive_seconds: Annotated[
        float,
        typer.Option(help="Idle time before a connection between requests is closed."),
    ] = Serve.keep_alive_seconds,
    dtype: Annotated[
        Dtype,
        typer.Option(
            help="Vectors answered unless a request asks otherwise; int8/uint8 need the model's "
            "calibration (albert-onnx calibrate)."
        ),
    ] = Serve.dtype,
) -> None:
    """Serve embeddings over HTTP: OpenAI /v1/embeddings and text-embeddings-inference /embed."""
    try:
        from albert_onnx.serve.server import serve as run_server
    except ImportError as exc:
        raise fail(
            f"serve needs the serve extra: pip install 'albert-onnx[cpu,serve]' ({exc})"
        ) from exc
    with reported():
        status = run_server(
            Serve(
                model=Model(model, provider, precision, threads=threads, device_id=device_id,
                            max_batch_tokens=max_batch_tokens),
                host=host, port=port, api_key=api_key, max_queue_tokens=max_queue_tokens,
                max_inputs_per_request=max_inputs_per_request, max_wait_ms=max_wait_ms,
                max_body_bytes=max_body_bytes, truncate=truncate,
                isolate_requests=isolate_requests, drain_seconds=drain_seconds,
                drain_min_seconds=drain_min_seconds,
                served_model_name=served_model_name, max_connections=max_connections,
                request_timeout=request_timeout, keep_alive_seconds=keep_alive_seconds,
                dtype=dtype,
            )
        )  # fmt: skip
    raise typer.Exit(status)


@app.command("word-vectors")
def word_vectors(
    words: Annotated[list[str], typer.Argument(help="Words to look up.")],
    model: ModelOption = None,
    project: Annotated[bool, typer.Option(help="Map E-dim vectors to H dims.")] = False,
) -> None:
    """Print static word vectors (mean of word pieces) from the embedding table."""
    from albert_onnx.runtime.word_vectors import WordVectors

    with reported():
        vectors = WordVectors(model)
        for word in words:
            vector = vectors.vector(word, project=project)
            pieces = " ".join(p for p, _ in vectors.pieces(word))
            values = " ".join(f"{x:.5f}" for x in vector)
            typer.echo(f"{word}\t{pieces}\t{values}")  # plain TSV: rich would expand tabs


def _print_variants(model_dir: Path, manifest) -> None:
    table = Table("variant", "file", "MB", "max |diff|", "min cos", "fused", "sha256")
    for name, v in manifest.variants.items():
        try:
            verified_file(model_dir, v.file, v.sha256)
            state = "ok"
        except ManifestError:
            state = "[red]MISMATCH[/]"
        table.add_row(
            name,
            v.file,
            f"{v.bytes / 1e6:.1f}",
            f"{v.parity['max_abs_diff_last_hidden_state']:.2e}",
            f"{v.parity['min_cosine_sentence_embedding']:.5f}",
            " ".join(f"{SHORT_OP.get(k, k)}={n}" for k, n in v.fused_operators.items()) or "-",
            state,
        )
    out.print(table)
