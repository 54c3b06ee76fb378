"""The corpus job: every line accounted for, outputs aligned with ids, kill-safe and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from albert_onnx import Embedder
from albert_onnx.errors import CorpusError, OutputError
from albert_onnx.runtime.job import embed_corpus

from conftest import OFFLINE_ENV, real_texts, run_cli, write_jsonl

BAD_LINES = [
    (b'{"text": "fine"}\n{"text": "unterminated\n', 2, "invalid JSON"),
    (b'{"text": "fine"}\n["a", "list"]\n', 2, "expected a JSON object, got list"),
    (b'{"text": "fine"}\n{"body": "x"}\n', 2, "field 'text' is missing"),
    (b'{"text": 42}\n', 1, "field 'text' is int, not a string"),
    (b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n', 3, "invalid UTF-8 at byte"),
]


@pytest.mark.parametrize(("content", "line", "reason"), BAD_LINES)
def test_bad_line_stops_the_run_naming_file_and_line(
    content, line, reason, english_export, tmp_path
):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(content)
    result = run_cli(
        "embed", corpus, "--model", english_export, "--output", tmp_path / "v.npy", "--no-progress"
    )
    assert result.returncode == 1
    assert f"{corpus}:{line}: {reason}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "v.npy").exists()


def test_skip_mode_logs_bad_lines_and_keeps_ids_aligned(embedder, tmp_path):
    lines = [
        b'{"text": "first"}',
        b"not json",
        b'{"text": "third"}',
        b"",
        b'{"text": ["x"]}',
        b'{"text": "sixth"}',
        b'{"text": "bad \xff"}',
        b'{"text": ""}',
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "v.npy"
    summary = embed_corpus(embedder, corpus, output, on_error="skip")
    ids = [json.loads(line) for line in (tmp_path / "v.npy.ids.jsonl").read_text().splitlines()]
    assert ids == [1, 3, 6, 8]  # line numbers of the rows that exist
    errors = [json.loads(x) for x in (tmp_path / "v.npy.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [2, 5, 7]
    assert "invalid JSON" in errors[0]["reason"] and "list" in errors[1]["reason"]
    assert (summary.stats.docs, summary.stats.skipped, summary.stats.blank_lines) == (4, 3, 1)
    vectors = np.load(output)
    expected = embedder.embed(["first", "third", "sixth", ""])  # the empty string is text
    assert np.abs(vectors - expected).max() < 1e-5


def test_bom_crlf_and_blank_lines_are_accepted(embedder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n\r\n{"text": "two"}\r\n   \r\n')
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npz")
    saved = np.load(tmp_path / "v.npz")
    assert saved["ids"].tolist() == [1, 3] and summary.stats.blank_lines == 2
    assert np.abs(saved["embeddings"] - embedder.embed(["one", "two"])).max() < 1e-5


def test_error_in_the_middle_names_the_line(embedder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"t{i}"}) for i in range(50)]
    lines[37] = '{"text": null}'
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"corpus.jsonl:38: field 'text' is NoneType"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", window_texts=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", real_texts()[:30])


@pytest.fixture(scope="module")
def expected(embedder):
    return embedder.embed(real_texts()[:30])


class TestOutputFormats:
    def test_npy_with_ids_sidecar_and_float16(self, embedder, corpus, expected, tmp_path):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", id_field="doc_id", dtype="float16")
        vectors = np.load(tmp_path / "v.npy", mmap_mode="r")
        assert vectors.dtype == np.float16 and vectors.shape == (30, 64)
        assert np.abs(vectors.astype(np.float32) - expected).max() < 1e-2
        ids = (tmp_path / "v.npy.ids.jsonl").read_text().split()
        assert ids == [json.dumps(f"doc{i}") for i in range(30)]

    def test_parquet(self, embedder, corpus, expected, tmp_path):
        import pyarrow.parquet as pq

        embed_corpus(embedder, corpus, tmp_path / "v.parquet", id_field="doc_id")
        table = pq.read_table(tmp_path / "v.parquet")
        assert table.column("id").to_pylist() == [f"doc{i}" for i in range(30)]
        assert np.abs(np.array(table.column("vector").to_pylist()) - expected).max() < 1e-5

    def test_jsonl(self, embedder, corpus, expected, tmp_path):
        embed_corpus(embedder, corpus, tmp_path / "v.jsonl", id_field="doc_id", window_texts=7)
        rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == [f"doc{i}" for i in range(30)]
        assert np.abs(np.array([r["vector"] for r in rows]) - expected).max() < 1e-5

    def test_token_vectors_in_npz_with_offsets(self, english_export, corpus, tmp_path):
        tokens = Embedder(english_export, provider="cpu", precision="fp32", pooling="none")
        embed_corpus(tokens, corpus, tmp_path / "t.npz", window_texts=8)
        saved = np.load(tmp_path / "t.npz")
        offsets = saved["offsets"]
        expected = tokens.embed(real_texts()[:30])
        assert len(offsets) == 31 and offsets[-1] == saved["embeddings"].shape[0]
        for i in (0, 7, 29):
            assert (
                np.abs(saved["embeddings"][offsets[i] : offsets[i + 1]] - expected[i]).max() < 1e-5
            )

    def test_existing_output_needs_force(self, embedder, corpus, tmp_path):
        (tmp_path / "v.npy").write_text("precious")
        with pytest.raises(OutputError, match="already exists; pass --force"):
            embed_corpus(embedder, corpus, tmp_path / "v.npy")
        assert (tmp_path / "v.npy").read_text() == "precious"
        embed_corpus(embedder, corpus, tmp_path / "v.npy", force=True)
        assert np.load(tmp_path / "v.npy").shape == (30, 64)


def _run_and_kill(args: list, parts_dir, parts_before_kill: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "albert_onnx", *map(str, args)],
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(parts_dir.glob("part-*.parquet"))) >= parts_before_kill:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_sigkill_then_resume_gives_identical_bytes(english_export, tmp_path):
    texts = (real_texts() * 3)[:600]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    common = [
        "--model",
        english_export,
        "--id-field",
        "doc_id",
        "--window-texts",
        "25",
        "--part-bytes",
        "8000",
        "--no-progress",
        "--precision",
        "fp32",
        "--provider",
        "cpu",
        "--threads",
        "1",
    ]
    reference = tmp_path / "full.npy"
    assert run_cli("embed", corpus, "--output", reference, *common).returncode == 0
    for kill_after in (1, 9):
        output = tmp_path / f"killed{kill_after}.npy"
        _run_and_kill(
            ["embed", corpus, "--output", output, *common],
            tmp_path / f"killed{kill_after}.npy.parts",
            kill_after,
        )
        assert not output.exists()
        again = run_cli("embed", corpus, "--output", output, *common)
        assert again.returncode == 1 and "--resume" in again.stderr
        resumed = run_cli("embed", corpus, "--output", output, *common, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "parts were done" in resumed.stdout
        assert output.read_bytes() == reference.read_bytes()
        assert (tmp_path / f"killed{kill_after}.npy.ids.jsonl").read_bytes() == (
            tmp_path / "full.npy.ids.jsonl"
        ).read_bytes()
        assert not (tmp_path / f"killed{kill_after}.npy.parts").exists()


def test_resume_refuses_changed_settings(english_export, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", real_texts()[:100])
    args = ["--model", english_export, "--window-texts", "10", "--no-progress",
            "--part-bytes", "3000"]  # fmt: skip
    _run_and_kill(
        ["embed", corpus, "--output", tmp_path / "v.npy", *args, "--threads", "1"],
        tmp_path / "v.npy.parts",
        1,
    )
    result = run_cli(
        "embed", corpus, "--output", tmp_path / "v.npy", *args, "--resume", "--pooling", "max"
    )
    assert result.returncode == 1 and "cannot resume, pooling changed" in result.stderr
