"""Resuming continues exactly where a run stopped, or refuses: never two corpora or two
models in one output, in every format, with windows that hold no record at all.

Runs are interrupted in-process (an exception from the progress callback once N part files
are on disk, as Ctrl-C would); test_corpus.py and test_datasets.py kill real processes with
SIGKILL. The numbers (3, 4, 5, 9) are the trustworthy-runtime audit's reproductions.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from albert_onnx import Embedder
from albert_onnx.errors import OptionError, OutputError
from albert_onnx.export.exporter import export_model
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.jobs import local

from conftest import (
    Interrupted,
    build_checkpoint,
    interrupt_after_parts,
    real_texts,
    run_cli,
    write_jsonl,
)

FORMATS = (".npy", ".npz", ".parquet", ".jsonl")


def interrupted(embedder, corpus, output, parts: int = 1, **options) -> None:
    with pytest.raises(Interrupted):
        embed_corpus(
            embedder, corpus, output, on_batch=interrupt_after_parts(output, parts), **options
        )
    assert not output.exists() and output.with_name(output.name + ".parts").is_dir()


def outputs_of(output):
    """Every file the run wrote, by name, as bytes."""
    return {
        p.name.replace(output.name, "OUT"): p.read_bytes()
        for p in output.parent.iterdir()
        if p.name.startswith(output.name)
    }


# -- resuming gives what an uninterrupted run gives, in every format -----------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_gives_the_bytes_of_an_uninterrupted_run(embedder, tmp_path, fmt):
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:60])
    options = {"id_field": "doc_id", "window_texts": 10, "on_error": "skip", "part_bytes": 4000}
    embed_corpus(embedder, corpus, tmp_path / f"full{fmt}", **options)
    interrupted(embedder, corpus, tmp_path / f"cut{fmt}", parts=3, **options)
    summary = embed_corpus(embedder, corpus, tmp_path / f"cut{fmt}", resume=True, **options)
    assert summary.resumed_parts == 3 and summary.parts > 3 and summary.stats.docs == 60
    assert outputs_of(tmp_path / f"cut{fmt}") == outputs_of(tmp_path / f"full{fmt}")


@pytest.mark.parametrize("fmt", [".npz", ".jsonl"])
def test_resume_with_token_vectors(english_export, tmp_path, fmt):
    tokens = Embedder(english_export, provider="cpu", precision="fp32", pooling="none")
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:40])
    embed_corpus(tokens, corpus, tmp_path / f"full{fmt}", part_bytes=4000)
    interrupted(tokens, corpus, tmp_path / f"cut{fmt}", parts=2, part_bytes=4000)
    embed_corpus(tokens, corpus, tmp_path / f"cut{fmt}", part_bytes=4000, resume=True)
    assert outputs_of(tmp_path / f"cut{fmt}") == outputs_of(tmp_path / f"full{fmt}")


# -- 3. the corpus must not change -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [("edit", "was modified"), ("insert", "was appended to"), ("truncate", "was cut"),
     ("append", "was appended to")],
)  # fmt: skip
def test_3_resume_refuses_a_changed_corpus_naming_it(embedder, tmp_path, change, named):
    """Size and modification time, from a listing: whatever changed, before or after the
    resume point, the refusal names the file."""
    texts = real_texts()[:50]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    output = tmp_path / "v.npy"
    interrupted(embedder, corpus, output, parts=2, part_bytes=4000)
    lines = corpus.read_text().splitlines(keepends=True)
    if change == "edit":
        lines[3] = lines[3].replace("doc3", "DOC3")  # the same size
    elif change == "insert":
        lines.insert(0, json.dumps({"text": "a new first line", "doc_id": "new"}) + "\n")
    elif change == "truncate":
        lines = lines[:12]
    else:
        lines.append(json.dumps({"text": "appended later", "doc_id": "late"}) + "\n")
    stat = corpus.stat()
    corpus.write_text("".join(lines))
    if change == "edit":  # written within the same clock tick, it would look unchanged
        os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(OutputError, match=rf"the input changed since the interrupted run: "
                       rf"{corpus} {named}"):  # fmt: skip
        embed_corpus(embedder, corpus, output, part_bytes=4000, resume=True)
    assert not output.exists()


# -- 4. the model must not change ------------------------------------------------------------


def test_4_resume_refuses_a_model_re_exported_into_the_same_directory(tmp_path):
    first = build_checkpoint(tmp_path / "ckpt-a", seed=11)
    second = build_checkpoint(tmp_path / "ckpt-b", seed=12)
    model = tmp_path / "model"
    export_model(str(first), model)
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:30])
    interrupted(
        Embedder(model, provider="cpu"), corpus, tmp_path / "v.npy", parts=1, part_bytes=3000
    )
    export_model(str(second), model, force=True)
    with pytest.raises(OutputError, match="cannot resume, graph_sha256 changed"):
        embed_corpus(
            Embedder(model, provider="cpu"),
            corpus,
            tmp_path / "v.npy",
            part_bytes=3000,
            resume=True,
        )


# -- 5. windows and outputs with zero records ------------------------------------------------

EMPTY_CASES = {
    # 2 full windows of 4 records, then a window holding only a blank line
    "full windows then a blank line": (
        "".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(8)) + "\n",
        list(range(1, 9)),
    ),
    "blank lines only": ("\n\n  \n", []),
    "every line bad, skipped": ('{"text": 1}\nnot json\n[]\n', []),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_5_windows_without_records_and_empty_outputs(embedder, tmp_path, case, fmt, monkeypatch):
    content, ids = EMPTY_CASES[case]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(content)
    output = tmp_path / f"v{fmt}"
    summary = embed_corpus(embedder, corpus, output, window_texts=4, on_error="skip",
                           part_bytes=40)  # fmt: skip
    assert summary.stats.docs == len(ids)
    assert read_ids(output) == ids
    assert read_vectors(output).shape == (len(ids), 64)
    # stopped after every part, the empty ones included, was written: resuming finishes it
    with monkeypatch.context() as patched:
        patched.setattr(local, "commit", stop_here)
        with pytest.raises(Interrupted):
            embed_corpus(embedder, corpus, tmp_path / f"cut{fmt}", window_texts=4,
                         on_error="skip", part_bytes=40)  # fmt: skip
    embed_corpus(embedder, corpus, tmp_path / f"cut{fmt}", window_texts=4, on_error="skip",
                 part_bytes=40, resume=True)  # fmt: skip
    assert (tmp_path / f"cut{fmt}").read_bytes() == output.read_bytes()


def stop_here(*_args, **_kwargs):
    raise Interrupted


def read_ids(output) -> list:
    if output.suffix == ".npy":
        text = output.with_name(output.name + ".ids.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]
    if output.suffix == ".npz":
        return np.load(output)["ids"].tolist()
    if output.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(output).column("id").to_pylist()
    return [json.loads(line)["id"] for line in output.read_text().splitlines()]


def read_vectors(output) -> np.ndarray:
    if output.suffix == ".npy":
        return np.load(output)
    if output.suffix == ".npz":
        return np.load(output)["embeddings"]
    if output.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(output).column("vector").to_pylist()
        return np.array(rows, dtype=np.float32).reshape(len(rows), 64)
    rows = [json.loads(line)["vector"] for line in output.read_text().splitlines()]
    return np.array(rows, dtype=np.float32).reshape(len(rows), 64)


# -- 9. resuming what there is to resume ----------------------------------------------------


def test_9_a_run_stopped_before_its_first_part_resumes_from_the_start(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:20])
    interrupted(embedder, corpus, tmp_path / "v.npy", parts=0, window_texts=10)
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", window_texts=10, resume=True)
    assert summary.resumed_parts == 0 and summary.stats.docs == 20


def test_9_a_run_killed_before_its_state_was_written_resumes_from_the_start(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:20])
    (tmp_path / "v.npy.parts").mkdir()  # what a kill between mkdir and the first state leaves
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True)
    assert summary.stats.docs == 20 and np.load(tmp_path / "v.npy").shape == (20, 64)


def test_9_resume_on_a_finished_output_says_it_is_complete(english_export, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["one", "two"])
    args = ["embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export, "--no-progress"]
    assert run_cli(*args).returncode == 0
    before = (tmp_path / "v.npy").read_bytes()
    again = run_cli(*args, "--resume")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "v.npy is already complete: there is no interrupted run to resume" in again.stderr
    assert (tmp_path / "v.npy").read_bytes() == before


def test_9_resume_names_every_setting_that_changed(embedder, tmp_path):
    """The settings that shape the output are compared one by one and named."""
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:30])
    interrupted(embedder, corpus, tmp_path / "v.npy", parts=1, part_bytes=3000)
    with pytest.raises(OutputError, match="cannot resume, dtype, window_texts changed"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", window_texts=5, dtype="float16",
                     part_bytes=3000, resume=True)  # fmt: skip


def test_9_a_finish_killed_after_the_output_is_in_place_is_complete(embedder, tmp_path):
    """The commit writes the output last and removes the state before the parts: parts
    without a state beside an output are that output's, not a run to redo."""
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:20])
    output = tmp_path / "v.npy"
    embed_corpus(embedder, corpus, output, window_texts=10)
    before = output.read_bytes()
    (tmp_path / "v.npy.parts").mkdir()
    (tmp_path / "v.npy.parts" / "part-000000.parquet").write_bytes(b"left by the kill")
    with pytest.raises(OutputError, match="already complete"):
        embed_corpus(embedder, corpus, output, window_texts=10, resume=True)
    assert output.read_bytes() == before and not (tmp_path / "v.npy.parts").exists()


def test_9_resume_and_force_together_are_refused(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    with pytest.raises(OptionError, match="choose one"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True, force=True)


@pytest.mark.parametrize("state", ["[1, 2]", '{"format": 1}', "not json"])
def test_9_a_state_file_albert_onnx_did_not_write_is_one_error(embedder, tmp_path, state):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    (tmp_path / "v.npy.parts").mkdir()
    (tmp_path / "v.npy.parts" / "_state.json").write_text(state)
    with pytest.raises(OutputError, match="not a state this albert-onnx wrote"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True)
