"""Ray Data, on a real local Ray instance (no mocks): Parquet in, parts out, every id exactly
once, the single-process vectors, a SIGKILLed worker retried, and a killed driver resumed;
and on a cluster started by `ray start --head`, reached by its address."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from albert_onnx import Embedder
from albert_onnx.errors import CorpusError, OutputError
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.ray_data import (
    EmbedWorker,
    _materialize,
    embed_dataset,
    embed_parts,
    iter_vectors,
    worker_model,
)

from conftest import OFFLINE_ENV, real_texts, sts_sentences

TIMEOUT = 300


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return (real_texts() + sts_sentences()[:760])[:1000]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> Path:
    path = tmp_path_factory.mktemp("ray") / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path,
                   row_group_size=128)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def reference(english_export, texts) -> np.ndarray:
    return Embedder(english_export, provider="cpu", precision="fp32").embed(texts)


def read_output(output: Path) -> tuple[list[int], np.ndarray]:
    ids, vectors = [], []
    for part_ids, part_vectors in iter_vectors(output):
        ids += part_ids
        vectors.append(part_vectors)
    return ids, np.concatenate(vectors)


def assert_exactly_once_and_equal(output: Path, reference: np.ndarray) -> None:
    ids, vectors = read_output(output)
    assert sorted(ids) == list(range(len(reference)))  # every id, once
    got = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    want = reference[ids] / np.linalg.norm(reference[ids], axis=1, keepdims=True)
    assert (got * want).sum(1).min() >= 0.99999


def test_parquet_in_parts_out_every_id_once_with_the_single_process_vectors(
    local_ray, english_export, corpus, reference, tmp_path
):
    summary = embed_parts(corpus, tmp_path / "out", english_export, id_field="id",
                          precision="fp32", workers=2, part_rows=100)  # fmt: skip
    assert (summary.parts, summary.parts_embedded, summary.stats.docs) == (10, 10, 1000)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows"] == 1000 and len(manifest["parts"]) == 10
    assert not (tmp_path / "out" / "_state.json").exists()
    assert_exactly_once_and_equal(tmp_path / "out", reference)
    with pytest.raises(OutputError, match="already exists"):
        embed_parts(corpus, tmp_path / "out", english_export, id_field="id")


def test_embed_dataset_maps_a_ray_dataset(local_ray, english_export, corpus, reference):
    dataset = ray.data.read_parquet(str(corpus))
    # one worker: the read stage needs a CPU of its own, or the pool holds both and nothing
    # is read (Ray Data waits for resources that never free up)
    vectors = embed_dataset(dataset, english_export, "text", "id", workers=1, precision="fp32")
    table = pa.concat_tables(ray.get(vectors.to_arrow_refs()))
    ids = table.column("id").to_pylist()
    got = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert sorted(ids) == list(range(1000))
    assert np.abs(got - reference[ids]).max() < 1e-5


def map_worker_pids() -> list[int]:
    """Ray Data's map workers, by their process title."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapBatches(EmbedWorker)" in title:
                pids.append(int(entry.name))
    return pids


def test_a_sigkilled_worker_is_retried_and_every_row_is_still_there_once(
    local_ray, english_export, corpus, reference, tmp_path
):
    output, killed = tmp_path / "out", []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(list(output.glob("part-*.parquet"))) < 2:
            time.sleep(0.02)
        if pids := map_worker_pids():
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    summary = embed_parts(corpus, output, english_export, id_field="id", precision="fp32",
                          workers=2, part_rows=25)  # fmt: skip
    killer.join()
    assert killed, "no worker was running to be killed"
    assert summary.parts == 40 and summary.stats.docs == 1000
    assert_exactly_once_and_equal(output, reference)


def test_resume_after_the_driver_was_killed_embeds_only_the_missing_parts(
    english_export, corpus, reference, tmp_path
):
    output = tmp_path / "out"
    args = [sys.executable, "-m", "albert_onnx", "embed", str(corpus), "-o", str(output),
            "--ray", "--workers", "1", "--part-rows", "25", "--id-field", "id",
            "--precision", "fp32", "--provider", "cpu", "--model", str(english_export)]  # fmt: skip
    driver = subprocess.Popen(args, env=OFFLINE_ENV, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and len(list(output.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    done_before = len(list(output.glob("part-*.parquet")))
    assert 3 <= done_before < 40 and not (output / "_manifest.json").exists()

    original, stat = corpus.read_bytes(), corpus.stat()
    pq.write_table(pq.read_table(corpus).slice(0, 999), corpus)  # the input changed
    try:
        refused = subprocess.run([*args, "--resume"], env=OFFLINE_ENV, capture_output=True,
                                 text=True, timeout=TIMEOUT, start_new_session=True)  # fmt: skip
    finally:  # put back as it was, modification time included (as `cp -p` would)
        corpus.write_bytes(original)
        os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert refused.returncode == 1 and "the input changed" in refused.stderr

    resumed = subprocess.run([*args, "--resume"], env=OFFLINE_ENV, capture_output=True,
                             text=True, timeout=TIMEOUT, start_new_session=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"wrote 40 parts ({40 - done_before} embedded by this run)" in resumed.stdout
    assert_exactly_once_and_equal(output, reference)


def test_bad_and_blank_lines_do_not_shift_parts_or_ids(local_ray, english_export, tmp_path):
    lines = []
    for i in range(120):
        lines.append(json.dumps({"id": f"d{i}", "text": real_texts()[i]}))
        if i % 17 == 0:
            lines += ["", "not json"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    summary = embed_parts(corpus, tmp_path / "out", english_export, id_field="id",
                          on_error="skip", precision="fp32", workers=1, part_rows=25)  # fmt: skip
    assert (summary.stats.docs, summary.stats.skipped, summary.stats.blank_lines) == (120, 8, 8)
    ids, vectors = read_output(tmp_path / "out")
    assert ids == [f"d{i}" for i in range(120)]
    expected = Embedder(english_export, provider="cpu", precision="fp32").embed(real_texts()[:120])
    assert np.abs(vectors - expected).max() < 1e-5
    errors = (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()
    assert len(errors) == 8 and json.loads(errors[0])["line"] == 3


def test_options_are_checked_on_the_driver(local_ray, english_export, corpus, tmp_path):
    from albert_onnx.errors import OptionError

    with pytest.raises(OptionError, match="Ray is already started in this process"):
        embed_parts(corpus, tmp_path / "out", english_export, address="auto")
    with pytest.raises(OptionError, match="precision must be one of"):
        embed_parts(corpus, tmp_path / "out", english_export, precision="int4")
    with pytest.raises(OptionError, match="pooling must be one of"):
        embed_dataset(ray.data.read_parquet(str(corpus)), english_export, pooling="avg")
    with pytest.raises(OptionError, match="the dataset has no column 'body'"):
        embed_dataset(ray.data.read_parquet(str(corpus)), english_export, text_column="body")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A Ray cluster as `ray start --head` makes one, with its token authentication on: its
    GCS address and the environment a client needs. Stopped with its process group."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short socket paths
    env = {**OFFLINE_ENV, "COLUMNS": "400", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
         "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats",
         "--temp-dir", temp],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert head.poll() is None, "ray start --head exited"
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_the_job_runs_on_the_cluster_its_address_names(
    english_export, corpus, reference, ray_cluster, tmp_path
):
    address, env = ray_cluster
    args = [sys.executable, "-m", "albert_onnx", "embed", str(corpus), "-o", str(tmp_path / "out"),
            "--ray", "--ray-address", address, "--workers", "1", "--part-rows", "250",
            "--id-field", "id", "--precision", "fp32", "--model", str(english_export)]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    port = address.rsplit(":", 1)[1]
    assert re.search(rf"wrote 4 parts .* on the Ray instance at [\d.]+:{port}\b", done.stdout)
    assert_exactly_once_and_equal(tmp_path / "out", reference)

    # as `ray job submit` runs its entrypoint: the address in RAY_ADDRESS, no option
    submitted = [*args[:6], str(tmp_path / "submitted"), args[7], *args[10:]]
    done = subprocess.run(submitted, env={**env, "RAY_ADDRESS": address}, capture_output=True,
                          text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(rf"on the Ray instance at [\d.]+:{port}\b", done.stdout)

    without_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run([*args[:6], str(tmp_path / "again"), *args[7:]], env=without_token,
                             capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert refused.returncode == 1
    assert f"cannot connect to the Ray cluster at {address}" in refused.stderr
    assert not (tmp_path / "again").exists()  # a failed connection leaves no output behind


def test_ray_client_addresses_are_refused_with_what_to_do_instead(english_export, corpus, tmp_path):
    from albert_onnx.errors import OptionError

    with pytest.raises(OptionError, match=r"does not run over Ray Client .* `ray job submit`"):
        embed_parts(corpus, tmp_path / "out", english_export, address="ray://127.0.0.1:10001")


def test_force_replaces_only_a_ray_output_and_only_once_the_input_is_read(
    local_ray, english_export, corpus, tmp_path
):
    kept = tmp_path / "results"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for option in ("force", "resume"):
        with pytest.raises(OutputError, match="not an albert-onnx --ray output"):
            embed_parts(corpus, kept, english_export, **{option: True})
    (kept / "notes.txt").rename(kept / "part-00000-9f2c.snappy.parquet")  # Spark's, not ours
    with pytest.raises(OutputError, match="not an albert-onnx --ray output"):
        embed_parts(corpus, kept, english_export, force=True)
    assert [p.name for p in kept.iterdir()] == ["part-00000-9f2c.snappy.parquet"]

    output = tmp_path / "out"
    embed_parts(corpus, output, english_export, id_field="id", workers=1, part_rows=500)
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"broken\.jsonl:2"):
        embed_parts(broken, output, english_export, force=True)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before  # nothing lost

    (output / "._manifest.json.tmp").write_text("{")  # as a kill while finishing leaves it
    again = embed_parts(corpus, output, english_export, id_field="id", workers=1,
                        part_rows=250, force=True)  # fmt: skip
    assert again.parts == 4 and sorted(p.name for p in output.iterdir()) == [
        "_manifest.json", *(f"part-{i:06d}.parquet" for i in range(4))]  # fmt: skip


def test_a_worker_no_node_can_hold_is_refused_not_waited_for(english_export, corpus, tmp_path):
    output = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "albert_onnx", "embed", str(corpus), "-o", str(output), "--ray",
         "--threads-per-worker", "512", "--model", str(english_export)],
        env=OFFLINE_ENV, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the Ray nodes hold 0 worker(s) of 512 CPUs, not 1" in done.stderr
    assert not output.exists()


def test_a_worker_counts_every_window_and_rebuilds_a_damaged_copy_of_the_model(
    english_export, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's copies alone
    model = worker_model(ModelDir.open(english_export))
    options = {"provider": "cpu", "precision": "fp32", "pooling": None, "normalize": None,
               "max_batch_tokens": None, "long_texts": "chunk", "dtype": "float32"}  # fmt: skip
    long_text = " ".join(real_texts()[:80])
    batch = pa.table({"id": [0, 1], "text": [long_text, "short"]})
    embedder = Embedder(english_export, provider="cpu", precision="fp32", long_texts="chunk")
    single = [
        embedder.pipeline.embed_docs(embedder.pipeline.tokenize([t]))[1].tokens
        for t in (long_text, "short")
    ]

    first = EmbedWorker(model, options, "text", "id")(batch)
    assert first.column("tokens").to_pylist() == single and single[0] > 512  # all windows
    copy = _materialize(model)
    assert copy.parent.stat().st_mode & 0o077 == 0  # this user's alone

    graph = copy / ModelDir.open(english_export).manifest.variants["fp32"].file
    original = graph.read_bytes()
    graph.write_bytes(b"damaged by a /tmp cleaner")
    again = EmbedWorker(model, options, "text", "id")(batch)
    assert graph.read_bytes() == original  # written again, not worked around
    assert np.array_equal(
        np.stack(again.column("vector").to_numpy(zero_copy_only=False)),
        np.stack(first.column("vector").to_numpy(zero_copy_only=False)),
    )
