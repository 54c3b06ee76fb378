"""`embed --ray` as users run it, on a real cluster of two nodes on this machine (`ray start
--head`, then `ray start --address`: each its own raylet and object store), its input and
its output in an S3-protocol server (moto's server mode on 127.0.0.1), so that nothing
depends on a shared filesystem: every record exactly once with the local executor's
vectors, a worker killed mid-part, a part that always kills its worker, a killed driver
resumed, and bad lines named by file and line."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
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

from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.jobs.commit import open_output

from conftest import OFFLINE_ENV, free_port, real_texts, stop_groups, sts_sentences, upload

TIMEOUT = 300


@pytest.fixture(scope="module")
def two_nodes(s3):
    """A head and a second node, started as users start them (`ray start --head`, then
    `ray start --address`), each its own raylet and object store, with token authentication
    on (Ray 2.60's default) and the S3 server's environment, so that every worker reaches
    the S3 server through its own credentials chain. Yields the head's address and the
    environment a driver needs; both nodes are stopped with their process groups."""
    env = {**OFFLINE_ENV, **s3[0], "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    saved = {name: os.environ.get(name) for name in s3[0]}
    os.environ.update(s3[0])  # this process reads the outputs back from S3
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short socket paths
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats",
              "--dashboard-agent-listen-port", "0"]  # fmt: skip
    nodes = [subprocess.Popen(
        [ray_cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
         "--temp-dir", temp, *common],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        wait_for_nodes(address, env, 1)
        nodes.append(subprocess.Popen(
            [ray_cli, "start", "--address", address, *common], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        stop_groups(nodes[::-1])
        shutil.rmtree(temp, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_for_nodes(address: str, env: dict, count: int) -> None:
    """Until COUNT nodes are alive (asked by a driver of its own: this process never joins
    the cluster)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", code, address], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1] == str(count):
            return
        time.sleep(1)
    raise AssertionError(f"the cluster never had {count} nodes")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return (real_texts() + sts_sentences()[:200])[:400]


@pytest.fixture(scope="module")
def corpora(s3, texts, tmp_path_factory) -> dict[str, str]:
    """The same texts as a Parquet file (ids 0..399) and as two JSONL files (no ids) in S3."""
    _, store = s3
    local = tmp_path_factory.mktemp("ray-corpora")
    (local / "parquet").mkdir()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}),
                   local / "parquet" / "corpus.parquet", row_group_size=50)  # fmt: skip
    (local / "jsonl").mkdir()
    for n in range(2):
        half = texts[n * 200 : (n + 1) * 200]
        (local / "jsonl" / f"{n}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in half)
        )
    upload(store, local, "ray/corpora")
    return {"parquet": "s3://ray/corpora/parquet/", "jsonl": "s3://ray/corpora/jsonl/"}


def embed_on_ray(two_nodes, english_export, inputs: str, output: str, *args: str,
                 timeout: float = TIMEOUT) -> subprocess.CompletedProcess:  # fmt: skip
    """`albert-onnx embed INPUTS -o OUTPUT --ray` as a user runs it against the cluster."""
    address, env = two_nodes
    return subprocess.run(
        [sys.executable, "-m", "albert_onnx", "embed", inputs, "-o", output, "--ray",
         "--ray-address", address, "--workers", "2", "--precision", "fp32", "--provider",
         "cpu", "--model", str(english_export), "--no-progress", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def read_back(output: str) -> tuple[list, np.ndarray, dict]:
    manifest, parts = open_output(output)
    chunks = list(parts.chunks())
    return ([i for ids, _, _ in chunks for i in ids],
            np.concatenate([v for _, v, _ in chunks]), manifest)  # fmt: skip


def local_reference(
    english_export, corpus: str, tmp_path: Path, **options
) -> tuple[list, np.ndarray]:
    embedder = Embedder(english_export, provider="cpu", precision="fp32")
    embed_corpus(embedder, corpus, tmp_path / "local", **options)
    ids, vectors, _ = read_back(str(tmp_path / "local"))
    return ids, vectors


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


@pytest.mark.parametrize(
    ("corpus", "args", "options"),
    [("parquet", ["--id-field", "id", "--part-rows", "100"],  # 4 parts of 2 row groups
      {"id_field": "id", "part_rows": 100}),
     ("jsonl", ["--part-bytes", "8000"], {"part_bytes": 8000})],  # byte ranges, FILE:LINE ids
)  # fmt: skip
def test_every_record_once_with_the_local_executors_vectors(
    two_nodes, corpora, english_export, tmp_path, corpus, args, options
):
    output = f"s3://ray/out/{corpus}"
    done = embed_on_ray(two_nodes, english_export, corpora[corpus], output, *args)
    assert done.returncode == 0, done.stderr
    port = two_nodes[0].rsplit(":", 1)[1]
    assert re.search(rf"on the Ray instance at [\d.]+:{port}\b", done.stdout)
    assert "constructor arguments" not in done.stderr  # no noise from Ray about restarts
    ids, vectors, manifest = read_back(output)
    want_ids, want = local_reference(english_export, corpora[corpus], tmp_path, **options)
    assert len(manifest["parts"]) > 2 and manifest["rows"] == 400
    assert ids == want_ids and len(set(ids)) == 400  # every record, once, in input order
    assert cosine_min(vectors, want) >= 0.99999


def part_worker_pids(part: str | None = None) -> list[int]:
    """The processes of PartWorker actors (running PART, if given), by their titles:
    Ray names a worker's process after the task it runs."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::" in title and (part.encode() in title if part else b"PartWorker" in title
                                      or b"albert-onnx part-" in title):  # fmt: skip
                pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_part_is_restarted_and_its_part_run_again(
    two_nodes, corpora, english_export, tmp_path
):
    output, killed = "s3://ray/out/killed-worker", []
    args = ["--id-field", "id", "--part-rows", "50", "--window-texts", "10"]

    def kill_a_worker_running_a_part() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not killed:
            if pids := part_worker_pids("albert-onnx part-000002"):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_running_a_part, daemon=True)
    killer.start()
    done = embed_on_ray(two_nodes, english_export, corpora["parquet"], output, *args)
    killer.join(TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert killed, "no worker was running part-000002 to be killed"
    ids, vectors, manifest = read_back(output)
    want_ids, want = local_reference(english_export, corpora["parquet"], tmp_path,
                                     id_field="id", part_rows=50, window_texts=10)  # fmt: skip
    assert len(manifest["parts"]) == 8 and ids == want_ids and len(set(ids)) == 400
    assert cosine_min(vectors, want) >= 0.99999


def test_a_part_that_always_kills_its_worker_fails_the_job_naming_it(
    two_nodes, corpora, english_export
):
    stop, killed = threading.Event(), []

    def kill_every_worker_running_part_3() -> None:
        while not stop.is_set():
            for pid in part_worker_pids("albert-onnx part-000003"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_every_worker_running_part_3, daemon=True)
    killer.start()
    try:
        done = embed_on_ray(two_nodes, english_export, corpora["parquet"],
                            "s3://ray/out/always-killed", "--id-field", "id", "--part-rows",
                            "50", "--window-texts", "10")  # fmt: skip
    finally:
        stop.set()
        killer.join(TIMEOUT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    part = "part-000003.parquet (s3://ray/corpora/parquet/corpus.parquet, row group 3)"
    assert error.startswith(f"error: {part} ended its worker 4 times, and the job stops"), error
    assert len(set(killed)) == 4  # the first run and its 3 retries, each on a new process


def test_resume_after_the_driver_was_killed_runs_only_the_missing_parts(
    two_nodes, s3, corpora, english_export, tmp_path
):
    address, env = two_nodes
    store = s3[1]
    output = "s3://ray/out/killed-driver"
    args = [sys.executable, "-m", "albert_onnx", "embed", corpora["jsonl"], "-o", output,
            "--ray", "--ray-address", address, "--workers", "2", "--part-bytes",
            "4000", "--window-texts", "10", "--precision", "fp32", "--provider", "cpu",
            "--model", str(english_export), "--no-progress"]  # fmt: skip
    run_env = env
    driver = subprocess.Popen(args, env=run_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip

    def parts_written() -> int:
        listed = store.get_file_info(pa.fs.FileSelector("ray/out/killed-driver",
                                                        allow_not_found=True))  # fmt: skip
        return sum(i.base_name.startswith("part-") for i in listed)

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and parts_written() < 3 and driver.poll() is None:
        time.sleep(0.02)
    assert driver.poll() is None, driver.communicate()[1]  # still running: killed mid-job
    driver.send_signal(signal.SIGKILL)  # its actors die with it: Ray owns them by the driver
    driver.communicate()
    done_before = parts_written()
    assert done_before >= 3 and "_manifest.json" not in {
        i.base_name for i in store.get_file_info(pa.fs.FileSelector("ray/out/killed-driver"))
    }
    resumed = subprocess.run([*args, "--resume"], env=run_env, capture_output=True, text=True,
                             timeout=TIMEOUT)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    total = int(resumed.stdout.split("wrote ")[1].split(" part")[0])
    assert f"({total - done_before} embedded by this run)" in resumed.stdout
    ids, vectors, _ = read_back(output)
    want_ids, want = local_reference(english_export, corpora["jsonl"], tmp_path,
                                     part_bytes=4000, window_texts=10)  # fmt: skip
    assert ids == want_ids and cosine_min(vectors, want) >= 0.99999


def test_bad_lines_in_a_split_file_are_named_by_their_file_and_line(
    two_nodes, s3, english_export, tmp_path
):
    """Byte ranges know their first line only once the ranges before them are counted, and
    the ids' kind from the corpus's first id: an integer id in a later part is a bad line,
    as it is for the local executor."""
    store = s3[1]
    lines, bad = [], []
    for i in range(120):
        lines.append(json.dumps({"id": i if i == 100 else f"d{i}", "text": real_texts()[i]}))
        if i == 100:
            bad.append((len(lines), "field 'id' is an integer, but this corpus's ids are "
                        "strings: ids must all be strings or all integers"))  # fmt: skip
        if i % 17 == 0:
            lines += ["", "not json"]
            bad.append((len(lines), "invalid JSON (Expecting value at column 1)"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.jsonl").write_text("\n".join(lines) + "\n")
    upload(store, tmp_path / "c", "ray/bad")
    output = "s3://ray/out/bad"
    args = ["--id-field", "id", "--on-error", "skip", "--part-bytes", "3000"]
    done = embed_on_ray(two_nodes, english_export, "s3://ray/bad/bad.jsonl", output, *args)
    assert done.returncode == 0, done.stderr
    assert "119 docs" in done.stdout and "skipped 9, blank lines 8" in done.stdout
    ids, _, manifest = read_back(output)
    assert len(manifest["parts"]) > 3 and ids == [f"d{i}" for i in range(120) if i != 100]
    errors = [json.loads(x) for x in store.open_input_stream("ray/out/bad/_errors.jsonl")
              .read().decode().splitlines()]  # fmt: skip
    assert [(e["line"], e["reason"]) for e in errors] == bad
    assert {e["file"] for e in errors} == {"s3://ray/bad/bad.jsonl"}
    local = tmp_path / "local"
    embed_corpus(Embedder(english_export, provider="cpu", precision="fp32"),
                 tmp_path / "c" / "bad.jsonl", local, id_field="id", on_error="skip",
                 part_bytes=3000)  # fmt: skip
    assert [json.loads(x)["line"] for x in (local / "_errors.jsonl").read_text().splitlines()
            ] == [line for line, _ in bad]  # fmt: skip
