"""Resuming continues exactly where a run stopped, or refuses: never two corpora or two
models in one output, in every format, with windows that hold no record at all.

Runs are interrupted in-process (an exception from the progress callback once N shards are
on disk, as Ctrl-C would); test_corpus.py kills real processes with SIGKILL. The numbers
(3, 4, 5, 9) are the trustworthy-runtime audit's reproductions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from albert_onnx import Embedder
from albert_onnx.errors import CorpusError, OptionError, OutputError
from albert_onnx.export.exporter import export_model
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.writer import ShardWriter

from conftest import (
    Interrupted,
    build_checkpoint,
    interrupt_after_shards,
    real_texts,
    run_cli,
    write_jsonl,
)

FORMATS = (".npy", ".npz", ".parquet", ".jsonl")


@pytest.fixture(scope="module")
def embedder(english_export) -> Embedder:
    return Embedder(english_export, provider="cpu", precision="fp32")


def interrupted(embedder, corpus, output, shards: int = 1, **options) -> None:
    with pytest.raises(Interrupted):
        embed_corpus(
            embedder, corpus, output, on_batch=interrupt_after_shards(output, shards), **options
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
    options = {"id_field": "doc_id", "window_texts": 10, "on_error": "skip"}
    embed_corpus(embedder, corpus, tmp_path / f"full{fmt}", **options)
    interrupted(embedder, corpus, tmp_path / f"cut{fmt}", shards=3, **options)
    summary = embed_corpus(embedder, corpus, tmp_path / f"cut{fmt}", resume=True, **options)
    assert summary.resumed_after_line == 30 and summary.stats.docs == 60
    assert outputs_of(tmp_path / f"cut{fmt}") == outputs_of(tmp_path / f"full{fmt}")


@pytest.mark.parametrize("fmt", [".npz", ".jsonl"])
def test_resume_with_token_vectors(english_export, tmp_path, fmt):
    tokens = Embedder(english_export, provider="cpu", precision="fp32", pooling="none")
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:40])
    embed_corpus(tokens, corpus, tmp_path / f"full{fmt}", window_texts=10)
    interrupted(tokens, corpus, tmp_path / f"cut{fmt}", shards=2, window_texts=10)
    embed_corpus(tokens, corpus, tmp_path / f"cut{fmt}", window_texts=10, resume=True)
    assert outputs_of(tmp_path / f"cut{fmt}") == outputs_of(tmp_path / f"full{fmt}")


# -- 3. the corpus before the resume point must not change ---------------------------------


@pytest.mark.parametrize("change", ["edit", "insert", "truncate"])
def test_3_resume_refuses_a_corpus_changed_before_the_resume_point(embedder, tmp_path, change):
    texts = real_texts()[:50]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    output = tmp_path / "v.npy"
    interrupted(embedder, corpus, output, shards=2, window_texts=10)
    lines = corpus.read_text().splitlines(keepends=True)
    if change == "edit":
        lines[3] = json.dumps({"text": "an edited line", "doc_id": "doc3"}) + "\n"
    elif change == "insert":
        lines.insert(0, json.dumps({"text": "a new first line", "doc_id": "new"}) + "\n")
    else:
        lines = lines[:12]
    corpus.write_text("".join(lines))
    with pytest.raises(CorpusError, match=r"changed since the interrupted run: its first [\d,]+ "):
        embed_corpus(embedder, corpus, output, window_texts=10, resume=True)
    assert not output.exists()


def test_3_lines_appended_after_the_resume_point_are_embedded(embedder, tmp_path):
    texts = real_texts()[:50]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    interrupted(embedder, corpus, tmp_path / "v.npy", shards=2, window_texts=10)
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "appended later", "doc_id": "late"}) + "\n")
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", window_texts=10, resume=True)
    assert summary.resumed_after_line == 20 and summary.stats.docs == 51
    expected = embedder.embed([*texts, "appended later"])
    assert np.abs(np.load(tmp_path / "v.npy") - expected).max() < 1e-5


# -- 4. the model must not change ------------------------------------------------------------


def test_4_resume_refuses_a_model_re_exported_into_the_same_directory(tmp_path):
    first = build_checkpoint(tmp_path / "ckpt-a", seed=11)
    second = build_checkpoint(tmp_path / "ckpt-b", seed=12)
    model = tmp_path / "model"
    export_model(str(first), model)
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:30])
    interrupted(
        Embedder(model, provider="cpu"), corpus, tmp_path / "v.npy", shards=1, window_texts=10
    )
    export_model(str(second), model, force=True)
    with pytest.raises(OutputError, match="cannot resume, graph_sha256 changed"):
        embed_corpus(
            Embedder(model, provider="cpu"),
            corpus,
            tmp_path / "v.npy",
            window_texts=10,
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
    summary = embed_corpus(embedder, corpus, output, window_texts=4, on_error="skip")
    assert summary.stats.docs == len(ids)
    assert read_ids(output) == ids
    assert read_vectors(output).shape == (len(ids), 64)
    # stopped after every shard, the empty one included, was written: resuming finishes it
    with monkeypatch.context() as patched:
        patched.setattr(ShardWriter, "finish", stop_here)
        with pytest.raises(Interrupted):
            embed_corpus(embedder, corpus, tmp_path / f"cut{fmt}", window_texts=4, on_error="skip")
    embed_corpus(
        embedder, corpus, tmp_path / f"cut{fmt}", window_texts=4, on_error="skip", resume=True
    )
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


def test_9_a_run_stopped_before_its_first_shard_resumes_from_the_start(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:20])
    interrupted(embedder, corpus, tmp_path / "v.npy", shards=0, window_texts=10)
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", window_texts=10, resume=True)
    assert summary.resumed_after_line == 0 and summary.stats.docs == 20


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
    interrupted(embedder, corpus, tmp_path / "v.npy", shards=1, window_texts=10)
    with pytest.raises(OutputError, match="cannot resume, dtype, window_texts changed"):
        embed_corpus(
            embedder, corpus, tmp_path / "v.npy", window_texts=5, dtype="float16", resume=True
        )


def test_3_a_last_line_without_its_end_that_grew_is_refused(embedder, tmp_path, monkeypatch):
    """The interrupted run read `{"text": "hel` as its last, unfinished line (a bad line,
    skipped); a writer then completed it. The bytes hashed are unchanged, but the missing
    line end shows that the line read then is not the line there now."""
    corpus = tmp_path / "c.jsonl"
    complete = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(10))
    corpus.write_text(complete + '{"text": "hel')
    options = {"window_texts": 5, "on_error": "skip"}
    with monkeypatch.context() as patched:
        patched.setattr(ShardWriter, "finish", stop_here)
        with pytest.raises(Interrupted):
            embed_corpus(embedder, corpus, tmp_path / "v.npy", **options)
    with open(corpus, "a") as f:
        f.write('lo"}\n')
    with pytest.raises(CorpusError, match="line 11 had no line end when it was embedded"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True, **options)


def test_9_a_finish_killed_after_the_output_is_in_place_is_complete(embedder, tmp_path):
    """finish writes the output last and removes the state before the shards: shards
    without a state beside an output are that output's, not a run to redo."""
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:20])
    output = tmp_path / "v.npy"
    embed_corpus(embedder, corpus, output, window_texts=10)
    before = output.read_bytes()
    (tmp_path / "v.npy.parts").mkdir()
    (tmp_path / "v.npy.parts" / "000000.npy").write_bytes(b"left by the kill")
    with pytest.raises(OutputError, match="already complete"):
        embed_corpus(embedder, corpus, output, window_texts=10, resume=True)
    assert output.read_bytes() == before and not (tmp_path / "v.npy.parts").exists()


def test_9_resume_and_force_together_are_refused(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    with pytest.raises(OptionError, match="choose one"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True, force=True)


@pytest.mark.parametrize("state", ["[1, 2]", '{"version": 2}', "not json"])
def test_9_a_state_file_albert_onnx_did_not_write_is_one_error(embedder, tmp_path, state):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    (tmp_path / "v.npy.parts").mkdir()
    (tmp_path / "v.npy.parts" / "state.json").write_text(state)
    with pytest.raises(OutputError, match="not a state this albert-onnx wrote"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", resume=True)
