"""An output never destroys an input, two runs never share an output, and a failure is one
line that names the path, with nothing half-written left behind.

The numbers (1, 2, 9) are the trustworthy-runtime audit's reproductions that these tests
turn into promises.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from albert_onnx import Embedder
from albert_onnx.errors import OutputError
from albert_onnx.runtime.job import embed_corpus

from conftest import OFFLINE_ENV, real_texts, run_cli, write_jsonl

# -- 1. an output that is an input ------------------------------------------------------


def test_1_embed_onto_its_own_corpus_is_refused_and_the_corpus_kept(english_export, tmp_path):
    corpus = write_jsonl(tmp_path / "same.jsonl", ["first", "second"])
    before = corpus.read_bytes()
    result = run_cli(
        "embed", corpus, "-o", corpus, "--force", "--model", english_export, "--no-progress"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "would overwrite the corpus" in result.stderr
    assert corpus.read_bytes() == before


@pytest.mark.parametrize(
    ("corpus_name", "output_name"),
    [
        ("v.npy.ids.jsonl", "v.npy"),  # the ids sidecar would be the corpus
        ("v.jsonl.errors.jsonl", "v.jsonl"),  # the bad-lines sidecar would be the corpus
        ("v.npy.parts/c.jsonl", "v.npy"),  # the shard directory holds the corpus
    ],
)
def test_1_no_sidecar_of_the_output_may_be_the_corpus(embedder, tmp_path, corpus_name, output_name):
    corpus = tmp_path / corpus_name
    corpus.parent.mkdir(exist_ok=True)
    write_jsonl(corpus, ["first", "second"])
    before = corpus.read_bytes()
    with pytest.raises(OutputError, match="would overwrite the corpus"):
        embed_corpus(embedder, corpus, tmp_path / output_name, force=True, on_error="skip")
    assert corpus.read_bytes() == before


def test_1_links_are_followed_to_the_corpus(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["first", "second"])
    before = corpus.read_bytes()
    for link in ("v.npy", "v.npy.lock", "v.npy.ids.jsonl"):
        (tmp_path / link).symlink_to(corpus)
        with pytest.raises(OutputError, match="would overwrite the corpus"):
            embed_corpus(embedder, corpus, tmp_path / "v.npy", force=True)
        (tmp_path / link).unlink()
    assert corpus.read_bytes() == before


def test_1_an_output_inside_the_model_directory_is_refused(english_export, tmp_path):
    model = shutil.copytree(english_export, tmp_path / "model")
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    with pytest.raises(OutputError, match="would overwrite the model directory"):
        embed_corpus(Embedder(model, provider="cpu"), corpus, model / "vectors.npy", force=True)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_1_an_output_that_is_a_directory_is_refused(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    (tmp_path / "v.npy").mkdir()
    (tmp_path / "v.npy" / "keep").write_text("mine")
    with pytest.raises(OutputError, match="is a directory"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", force=True)
    assert (tmp_path / "v.npy" / "keep").read_text() == "mine"


# -- 2. one run per output ---------------------------------------------------------------


def hold_lock(output) -> subprocess.Popen:
    """Another process that holds OUTPUT's lock until it is killed."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from albert_onnx.runtime.io.output_lock import OutputLock; "
        f"OutputLock(Path({str(output) + '.lock'!r}), Path({str(output)!r})).acquire(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_2_a_locked_output_is_refused_at_once_naming_the_holder(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["one", "two"])
    output = tmp_path / "v.npy"
    holder = hold_lock(output)
    try:
        with pytest.raises(
            OutputError, match=rf"being written by another run \(process {holder.pid}"
        ):
            embed_corpus(embedder, corpus, output, force=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's lock: no stale lock, though its file remains
    assert (tmp_path / "v.npy.lock").exists()
    embed_corpus(embedder, corpus, output, force=True)
    assert np.load(output).shape == (2, 64)
    assert not (tmp_path / "v.npy.lock").exists()


def test_2_a_forced_second_run_cannot_corrupt_a_running_one(english_export, tmp_path):
    """Run A writes v.npy; run B with --force on the same output fails at once, and A
    finishes with a correct file (this used to end in a file of 470 rows under a 2,000-row
    header, with ids from two corpora)."""
    texts_a = (real_texts() * 13)[:3000]  # long enough to be running while B tries
    corpus_a = write_jsonl(tmp_path / "a.jsonl", texts_a, id_prefix="a")
    corpus_b = write_jsonl(tmp_path / "b.jsonl", real_texts()[:50], id_prefix="b")
    output = tmp_path / "v.npy"
    common = ["--model", english_export, "--id-field", "doc_id", "--window-texts", "25"]
    run_a = subprocess.Popen(
        [sys.executable, "-m", "albert_onnx", "embed", corpus_a, "-o", output, *common,
         "--threads", "1", "--no-progress", "--precision", "fp32", "--provider", "cpu"],
        env=OFFLINE_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = tmp_path / "v.npy.parts" / "_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not state.exists():  # A holds the lock by now
        time.sleep(0.02)
    run_b = run_cli("embed", corpus_b, "-o", output, *common, "--force", "--no-progress")
    assert run_a.poll() is None, "A finished before B tried: the test proves nothing"
    _, err_a = run_a.communicate(timeout=600)
    assert run_b.returncode == 1 and f"process {run_a.pid}" in run_b.stderr, run_b.stderr
    assert run_a.returncode == 0, err_a
    vectors = np.load(output)
    ids = [json.loads(line) for line in (tmp_path / "v.npy.ids.jsonl").read_text().splitlines()]
    assert vectors.shape == (3000, 64) and ids == [f"a{i}" for i in range(3000)]
    expected = Embedder(english_export, provider="cpu", precision="fp32").embed(texts_a[:30])
    assert np.abs(vectors[:30] - expected).max() < 1e-5


# -- 9. failures are one line, and leave nothing half-written ------------------------------


def test_9_an_output_where_nothing_can_be_written_is_one_line(english_export, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    result = run_cli(
        "embed", corpus, "-o", "/proc/x.npy", "--model", english_export, "--no-progress"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    _, error = result.stderr.strip().splitlines()
    assert error.startswith("error: /proc/x.npy: cannot write there"), result.stderr


def limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_9_a_full_disk_is_one_line_leaves_no_temporary_file_and_can_be_resumed(
    english_export, tmp_path
):
    """RLIMIT_FSIZE makes writes past 20 kB fail as a full disk does (EFBIG instead of
    ENOSPC): the shards fit, the 51 kB final file does not."""
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:200])
    args = ["embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export,
            "--window-texts", "25", "--no-progress", "--precision", "fp32",
            "--provider", "cpu"]  # fmt: skip
    full = subprocess.run(
        [sys.executable, "-m", "albert_onnx", *map(str, args)],
        env=OFFLINE_ENV, capture_output=True, text=True, preexec_fn=limit_file_size(20_000),
    )  # fmt: skip
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert "File too large" in full.stderr and str(tmp_path) in full.stderr
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (tmp_path / "v.npy").exists()
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = Embedder(english_export, provider="cpu", precision="fp32").embed(real_texts()[:200])
    assert np.abs(np.load(tmp_path / "v.npy") - reference).max() < 1e-5


def can_mount_a_private_filesystem() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except FileNotFoundError:
        return False
    return probe.returncode == 0


@pytest.mark.skipif(
    not can_mount_a_private_filesystem(), reason="needs unshare -rm (user and mount namespaces)"
)
@pytest.mark.parametrize("fmt", [".npy", ".npz", ".parquet", ".jsonl"])
def test_9_a_really_full_disk_says_so_in_every_format(english_export, tmp_path, fmt):
    """A 24 kB tmpfs, mounted in a namespace of the run's own: a part's write fails with
    ENOSPC midway. It was reported as `[Errno None] None` (numpy's short-write message,
    without its cause); now it says what the OS said."""
    disk = tmp_path / "disk"
    disk.mkdir()
    corpus = write_jsonl(tmp_path / "c.jsonl", real_texts()[:200])
    script = 'mount -t tmpfs -o size=24k tmpfs "$1" && shift && exec "$@"'
    full = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(disk), sys.executable, "-m",
         "albert_onnx", "embed", str(corpus), "-o", str(disk / f"v{fmt}"), "--model",
         str(english_export), "--window-texts", "25", "--no-progress", "--provider", "cpu"],
        env=OFFLINE_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert full.returncode == 1 and "Traceback" not in full.stderr
    error = full.stderr.strip().splitlines()[-1]
    part = rf"{disk}/v\{fmt}\.parts/part-\d{{6}}\.parquet"
    assert re.fullmatch(rf"error: {part}: .*No space left on device", error), error


def test_9_a_manifest_that_is_not_an_object_is_one_line(english_export, tmp_path):
    model = shutil.copytree(english_export, tmp_path / "m")
    (model / "albert_onnx.json").write_text("[1, 2]")
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    result = run_cli("embed", corpus, "-o", tmp_path / "v.npy", "--model", model)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "albert_onnx.json: expected a JSON object, got list" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--texts", "0"], "texts must be a whole number of at least 1, not 0"),
        (["--corpus", "EMPTY"], "no texts to time"),
    ],
)
def test_9_bench_with_nothing_to_time_is_one_line(english_export, tmp_path, args, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    result = run_cli("bench", "--model", english_export, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_9_a_missing_corpus_is_one_line(english_export, tmp_path):
    result = run_cli("embed", tmp_path / "nope.jsonl", "-o", tmp_path / "v.npy")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in result.stderr
