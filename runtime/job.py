"""The corpus job behind `albert-onnx embed`: a corpus (any format `reader.py` reads) through
every stage into one output, in input order, resumably.

reader -> windows (grouped and tokenized a window ahead, in a background thread) ->
Embedder (bucketer, session, pooling) -> writer (one atomic shard per window, then the
final file). With each shard the state records how far the reader got (lines, bytes and
their sha256) and the counts so far, so `--resume` proves the corpus unchanged up to there,
goes on after it and finishes with the same counts and bytes as an uninterrupted run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.embedder import Embedder, OnBatch, coverage_warning
from albert_onnx.runtime.options import (
    Dtype,
    OnError,
    check_choice,
    check_field,
    check_positive,
)
from albert_onnx.runtime.reader import (
    STDIN,
    BadLine,
    Blank,
    Item,
    Position,
    Record,
    open_corpus,
)
from albert_onnx.runtime.stats import Stats, count_duplicates
from albert_onnx.runtime.windows import WINDOW_TEXTS, prepared, windows
from albert_onnx.runtime.writer import ShardWriter


@dataclass(frozen=True)
class Summary:
    stats: Stats  # the whole corpus's counts, the interrupted runs' included
    run: Stats  # this run's own share, and its seconds: what its rates are made of
    resumed_after_line: int
    outputs: list[str]


def embed_corpus(
    embedder: Embedder,
    corpus: str | Path,
    output: str | Path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: OnError = "raise",
    dtype: Dtype = "float32",
    resume: bool = False,
    force: bool = False,
    window_texts: int = WINDOW_TEXTS,
    on_batch: OnBatch | None = None,
) -> Summary:
    """Embed every record of CORPUS into OUTPUT, in input order; see the module docstring."""
    start = time.perf_counter()
    check_choice("on_error", on_error, OnError)
    check_choice("dtype", dtype, Dtype)
    check_positive("window_texts", window_texts)
    check_field("text_field", text_field)
    if id_field is not None:
        check_field("id_field", id_field)
    corpus = Path(corpus)
    if resume and str(corpus) == STDIN:
        raise CorpusError("--resume needs a file: standard input cannot be read again")
    # opened before the output is touched: a wrong file or column stops here
    reader = open_corpus(corpus, text_field, id_field, on_error)
    settings = {
        "input_format": reader.format,
        **embedder.fingerprint,
        "provider": embedder.provider,
        "precision": embedder.precision,
        "pooling": embedder.pooling,
        "normalize": embedder.normalize,
        "max_batch_tokens": embedder.max_batch_tokens,
        "chunked": embedder.chunked,
        "text_field": text_field,
        "id_field": id_field,
        "on_error": on_error,
        "dtype": dtype,
        "window_texts": window_texts,
    }
    with ShardWriter(
        Path(output),
        settings,
        dtype=dtype,
        ragged=embedder.gives_token_vectors,
        resume=resume,
        force=force,
        protect={"the model directory": embedder.model_dir}
        | ({} if str(corpus) == STDIN else {"the corpus": corpus}),
    ) as writer:
        done = writer.progress
        stats = Stats.from_dict(done["stats"]) if done else Stats()
        before = Stats.from_dict(stats.to_dict())
        if done:
            reader.resume_from(Position(**done["position"]))

        def prepare(items: list[Item]) -> tuple[Position, list[Record], list]:
            records = [item for item in items if isinstance(item, Record)]
            # the reader stands just after this window's last line (see `windows`)
            return reader.position(), records, embedder.tokenize([r.text for r in records])

        groups = windows(reader, window_texts, counts=lambda item: isinstance(item, Record))
        for items, (position, records, docs) in prepared(groups, prepare):
            vectors, window = embedder.embed_docs(docs, on_batch)
            errors = [i.error() for i in items if isinstance(i, BadLine)]
            window.skipped = len(errors)
            window.blank_lines = sum(isinstance(item, Blank) for item in items)
            stats.add(window)
            writer.write_shard(
                ids=[r.id for r in records],
                vectors=vectors,
                errors=errors,
                progress={"position": asdict(position), "stats": stats.to_dict()},
            )
        stats.duplicate_ids = count_duplicates(writer.ids())
        outputs = writer.finish(
            embedder.dimension, reader.id_kind or "str", keep_errors=on_error == "skip"
        )
    stats.seconds = time.perf_counter() - start
    run = Stats(**{k: v - getattr(before, k) for k, v in stats.to_dict().items()})
    run.seconds = stats.seconds
    coverage_warning(stats)
    return Summary(stats, run, reader.start.lines, [str(p) for p in outputs])
