"""The `albert-onnx` command line. Export is imported lazily so runtime-only installs work."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from albert_onnx.runtime.bucketer import WINDOW_TEXTS
from albert_onnx.runtime.manifest import ManifestError, load_manifest, verified_file

SHORT_OP = {
    "MultiHeadAttention": "MHA",
    "SkipLayerNormalization": "SkipLN",
    "EmbedLayerNormalization": "EmbedLN",
    "LayerNormalization": "LN",
}
ModelOption = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped model).")
]
ProviderOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


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
        str | None, typer.Option(help="mean, cls or max (default: the checkpoint's, else mean).")
    ] = None,
    normalize: Annotated[bool | None, typer.Option(help="Default L2 normalisation.")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Export an ALBERT checkpoint to a self-contained ONNX model directory."""
    try:
        from albert_onnx.export.errors import ExportError
        from albert_onnx.export.exporter import export_model
    except ImportError as exc:
        raise fail(
            f"export needs the export extra: pip install 'albert-onnx[export,cpu]' ({exc})"
        ) from exc
    start = time.perf_counter()
    try:
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
    except ExportError as exc:
        raise fail(str(exc)) from exc
    out.print(f"wrote {output} in {time.perf_counter() - start:.1f} s")
    _print_variants(output, manifest)


@app.command()
def info(model_dir: Annotated[Path, typer.Argument(help="Model directory.")]) -> None:
    """Describe a model directory and the execution providers that work on this machine."""
    from albert_onnx.runtime.model_dir import cuda_probe_graph
    from albert_onnx.runtime.providers import ProviderError, cuda_works, installed_runtimes

    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        raise fail(str(exc)) from exc
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
        probe = cuda_probe_graph(model_dir, manifest)
        working = ["CPUExecutionProvider"] + (
            ["CUDAExecutionProvider"] if cuda_works(str(probe)) else []
        )
    except ProviderError as exc:
        raise fail(str(exc)) from exc
    out.print(f"working providers: {', '.join(working)}")


@app.command()
def embed(
    corpus: Annotated[Path, typer.Argument(help="JSONL corpus, one object per line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy, .npz, .parquet or .jsonl")],
    model: ModelOption = None,
    text_field: Annotated[str, typer.Option(help="JSON field holding the text.")] = "text",
    id_field: Annotated[
        str | None, typer.Option(help="JSON field holding the id (default: line number).")
    ] = None,
    provider: ProviderOption = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, int8 or fp16.")] = "auto",
    pooling: Annotated[
        str | None, typer.Option(help="mean, cls, max or none (default: the model's).")
    ] = None,
    normalize: Annotated[
        bool | None, typer.Option(help="L2-normalise (default: the model's).")
    ] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per batch.")] = None,
    long_texts: Annotated[
        str, typer.Option(help="truncate, or chunk: mean of overlapping windows.")
    ] = "truncate",
    dtype: Annotated[str, typer.Option(help="float32 or float16 vectors.")] = "float32",
    on_error: Annotated[
        str, typer.Option(help="raise: stop at a bad line; skip: log it and go on.")
    ] = "raise",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: cores available).")
    ] = None,
    window_texts: Annotated[
        int, typer.Option(help="Texts sorted together per window; also the shard size.")
    ] = WINDOW_TEXTS,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Embed a JSONL corpus; vectors are written in input order with their ids."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from albert_onnx.runtime.corpus import embed_corpus
    from albert_onnx.runtime.embedder import Embedder
    from albert_onnx.runtime.providers import ProviderError
    from albert_onnx.runtime.reader import CorpusError
    from albert_onnx.runtime.writer import OutputError

    if on_error not in ("raise", "skip") or dtype not in ("float32", "float16"):
        raise fail("--on-error is raise or skip; --dtype is float32 or float16")
    if not corpus.is_file():
        raise fail(f"{corpus}: no such file")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(
            "{task.completed:,} docs  {task.fields[docs_s]:,.0f} docs/s  "
            "{task.fields[tokens_s]:,.0f} tokens/s"
        ),
        TimeElapsedColumn(),
    )
    try:
        embedder = Embedder(
            model,
            provider=provider,
            precision=precision,
            pooling=pooling,
            normalize=normalize,
            max_batch_tokens=max_batch_tokens,
            long_texts=long_texts,
            threads=threads,
        )
        err.print(f"[dim]{embedder.model_dir}: {embedder.precision} on {embedder.provider}[/]")
        with Progress(*columns, console=err, disable=not progress) as bar:
            task = bar.add_task("embedding", total=None, docs_s=0.0, tokens_s=0.0)
            start, seen = time.perf_counter(), {"tokens": 0}

            def on_batch(docs: int, tokens: int) -> None:
                seen["tokens"] += tokens
                elapsed = max(time.perf_counter() - start, 1e-9)
                done = bar.tasks[0].completed + docs
                bar.update(
                    task, advance=docs, docs_s=done / elapsed, tokens_s=seen["tokens"] / elapsed
                )

            summary = embed_corpus(
                embedder,
                corpus,
                output,
                text_field=text_field,
                id_field=id_field,
                on_error=on_error,
                dtype=dtype,
                resume=resume,
                force=force,
                window_texts=window_texts,
                on_batch=on_batch,
            )
    except (ManifestError, ProviderError, CorpusError, OutputError, ValueError) as exc:
        raise fail(str(exc)) from exc
    rate = summary.tokens / summary.seconds if summary.seconds else 0.0
    out.print(
        f"{summary.docs:,} docs, {summary.tokens:,} tokens ({rate:,.0f} tokens/s), "
        f"padding overhead {summary.padding_overhead:.1%}, truncated {summary.truncated:,}, "
        f"skipped {summary.skipped:,}, blank lines {summary.blank_lines:,}, "
        f"{summary.seconds:.1f} s"
        + (
            f"; resumed after line {summary.resumed_after_line:,}"
            if summary.resumed_after_line
            else ""
        ),
        highlight=False,
    )
    out.print(f"wrote {', '.join(summary.outputs)}", highlight=False)


@app.command()
def bench(
    model: ModelOption = None,
    provider: ProviderOption = "auto",
    precision: Annotated[
        list[str] | None, typer.Option(help="Variant(s) to time (default: all for the provider).")
    ] = None,
    corpus: Annotated[
        Path | None, typer.Option(help="JSONL corpus to time on (default: built-in texts).")
    ] = None,
    text_field: Annotated[str, typer.Option(help="JSON field holding the text.")] = "text",
    texts: Annotated[int, typer.Option(help="How many texts to time.")] = 512,
) -> None:
    """Time each model variant on this machine (tokens/s end to end), to choose one."""
    from albert_onnx.runtime.bench import bench as run_bench
    from albert_onnx.runtime.bench import sample_texts
    from albert_onnx.runtime.providers import ProviderError
    from albert_onnx.runtime.reader import CorpusError, Record, read_jsonl

    try:
        if corpus is None:
            sample = sample_texts(texts)
        else:
            items = read_jsonl(corpus, text_field=text_field)
            sample = [r.text for r in itertools.islice(
                (i for i in items if isinstance(i, Record)), texts)]  # fmt: skip
        table = Table("provider", "variant", "batching", "tokens/s", "docs/s", "padding",
                      "start s")  # fmt: skip
        for row in run_bench(model, sample, provider, precision):
            table.add_row(row.provider, row.precision, row.batching, f"{row.tokens_per_s:,.0f}",
                          f"{row.docs_per_s:,.1f}", f"{row.padding_overhead:.1%}",
                          f"{row.start_seconds:.2f}")  # fmt: skip
    except (ManifestError, ProviderError, CorpusError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    out.print(f"{len(sample)} texts, end to end (tokenization included), one warm-up pass each")
    out.print(table)


@app.command("word-vectors")
def word_vectors(
    words: Annotated[list[str], typer.Argument(help="Words to look up.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory.")],
    project: Annotated[bool, typer.Option(help="Map E-dim vectors to H dims.")] = False,
) -> None:
    """Print static word vectors (mean of word pieces) from the embedding table."""
    from albert_onnx.runtime.word_vectors import WordVectors

    try:
        vectors = WordVectors(model)
        for word in words:
            vector = vectors.vector(word, project=project)
            pieces = " ".join(p for p, _ in vectors.pieces(word))
            values = " ".join(f"{x:.5f}" for x in vector)
            typer.echo(f"{word}\t{pieces}\t{values}")  # plain TSV: rich would expand tabs
    except (ManifestError, ValueError) as exc:
        raise fail(str(exc)) from exc


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
