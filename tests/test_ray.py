"""Ray on a real local instance (no mocks): `embed_dataset` on a Ray Dataset, the options and
limits `embed --ray` checks on its driver, the model's copy on a worker's node; and `embed
--ray` on a cluster started by `ray start --head`, reached by its address.
test_ray_cluster.py runs `embed --ray` on two nodes with its data in S3."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from albert_onnx import Embedder
from albert_onnx.errors import OutputError
from albert_onnx.runtime.jobs.cluster import materialize, worker_model
from albert_onnx.runtime.jobs.distributed import PartWorker, run_on_ray
from albert_onnx.runtime.jobs.plan import make_plan
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import JobOptions, ModelOptions
from albert_onnx.runtime.pipeline.quantize import Ranges, quantize
from albert_onnx.runtime.ray_data import EmbedWorker, embed_dataset, iter_vectors

from conftest import OFFLINE_ENV, free_port, real_texts, stop_groups, sts_sentences

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


def ray_job(corpus, output, english_export, *, options: JobOptions | None = None, **kw):
    model = ModelOptions(english_export, "cpu", kw.pop("precision", "fp32"))
    job = options or JobOptions(id_field="id")
    return run_on_ray(model, [str(corpus)], str(output), job, **kw)


def test_options_are_checked_on_the_driver(local_ray, english_export, corpus, tmp_path):
    from albert_onnx.errors import OptionError

    with pytest.raises(OptionError, match="Ray is already started in this process"):
        ray_job(corpus, tmp_path / "out", english_export, address="auto")
    with pytest.raises(OptionError, match="precision must be one of"):
        ray_job(corpus, tmp_path / "out", english_export, precision="int4")
    with pytest.raises(OptionError, match="pooling must be one of"):
        embed_dataset(ray.data.read_parquet(str(corpus)), english_export, pooling="avg")
    with pytest.raises(OptionError, match="the dataset has no column 'body'"):
        embed_dataset(ray.data.read_parquet(str(corpus)), english_export, text_column="body")
    with pytest.raises(OptionError, match="embed_dataset writes float or packed-bit vectors"):
        embed_dataset(ray.data.read_parquet(str(corpus)), english_export, dtype="int8")
    assert not (tmp_path / "out").exists()


def test_int8_ranges_are_calibrated_where_the_workers_run(
    local_ray, english_export, corpus, texts, tmp_path
):
    """The driver holds no model: a task measures the ranges on a node, once, before any
    part runs; every worker quantizes with them, and the manifest records them."""
    output = tmp_path / "out"
    options = JobOptions(id_field="id", part_rows=256, dtype="int8", calibration_texts=300)
    ray_job(corpus, output, english_export, options=options, workers=1)
    manifest = json.loads((output / "_manifest.json").read_text())
    ranges = Ranges.from_dict(manifest["ranges"])
    assert ranges.source == "the first 300 records of the corpus"
    local = Embedder(english_export, provider="cpu", precision="fp32", threads=1)
    sample = local.embed(texts[:300])
    assert np.allclose(ranges.array, [sample.min(0), sample.max(0)], atol=1e-5)
    ids, stored = read_output(output)
    expected = quantize(local.embed(texts), "int8", ranges)
    assert ids == list(range(1000)) and stored.dtype == np.int8
    # the same steps, but for a vector that lies on a step's edge (float rounding)
    assert np.abs(stored.astype(int) - expected).max() <= 1
    assert (stored == expected).mean() > 0.999


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
        stop_groups([head])
        shutil.rmtree(temp, ignore_errors=True)


def test_the_job_runs_on_the_cluster_its_address_names(
    english_export, corpus, reference, ray_cluster, tmp_path
):
    address, env = ray_cluster
    args = [sys.executable, "-m", "albert_onnx", "embed", str(corpus), "-o", str(tmp_path / "out"),
            "--ray", "--ray-address", address, "--workers", "1", "--part-rows", "256",
            "--id-field", "id", "--precision", "fp32", "--model", str(english_export)]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    port = address.rsplit(":", 1)[1]
    assert re.search(rf"wrote 4 parts .* on the Ray instance at [\d.]+:{port}\b", done.stdout)
    ids, vectors = read_output(tmp_path / "out")
    assert ids == list(range(1000)) and np.abs(vectors - reference).max() < 1e-5

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
        ray_job(corpus, tmp_path / "out", english_export, address="ray://127.0.0.1:10001")


def test_force_replaces_only_what_albert_onnx_wrote(local_ray, english_export, corpus, tmp_path):
    kept = tmp_path / "results"
    kept.mkdir()
    (kept / "part-00000-9f2c.snappy.parquet").write_text("Spark's, not ours")
    for option in ("force", "resume"):
        with pytest.raises(OutputError, match="which albert-onnx did not write"):
            ray_job(corpus, kept, english_export, **{option: True})
    assert [p.name for p in kept.iterdir()] == ["part-00000-9f2c.snappy.parquet"]

    output = tmp_path / "out"
    ray_job(corpus, output, english_export, options=JobOptions(id_field="id", part_rows=500),
            workers=1)  # fmt: skip
    with pytest.raises(OutputError, match="already exists"):
        ray_job(corpus, output, english_export)
    (output / "._manifest.json.tmp").write_text("{")  # as a kill while finishing leaves it
    again = ray_job(corpus, output, english_export, workers=1, force=True,
                    options=JobOptions(id_field="id", part_rows=256))  # fmt: skip
    assert again.parts > 1 and sorted(p.name for p in output.iterdir()) == [
        "_manifest.json", *(f"part-{i:06d}.parquet" for i in range(again.parts))]  # fmt: skip
    assert read_output(output)[0] == list(range(1000))


def read_output(output: Path) -> tuple[list, np.ndarray]:
    ids, vectors = [], []
    for part_ids, part_vectors in iter_vectors(output):
        ids += part_ids
        vectors.append(part_vectors)
    return ids, np.concatenate(vectors)


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


def test_a_jobs_api_address_in_ray_address_is_refused_with_what_to_do(
    english_export, corpus, tmp_path
):
    done = subprocess.run(
        [sys.executable, "-m", "albert_onnx", "embed", str(corpus), "-o", str(tmp_path / "out"),
         "--ray", "--model", str(english_export)],
        env={**OFFLINE_ENV, "COLUMNS": "400", "RAY_ADDRESS": "http://127.0.0.1:8265"},
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "RAY_ADDRESS=http://127.0.0.1:8265 is the address of Ray's Jobs API" in done.stderr
    assert "ray job submit -- albert-onnx embed ... --ray" in done.stderr
    assert not (tmp_path / "out").exists()


def test_workers_count_every_window_and_rebuild_a_damaged_copy_of_the_model(
    english_export, corpus, tmp_path, monkeypatch
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
    copy = materialize(model)
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

    # the job's worker, its start as its own task: the copy damaged again, and rebuilt
    output = tmp_path / "parts"
    output.mkdir()
    (output / "_state.json").write_text("{}")  # what the driver writes before any worker
    job = JobOptions(id_field="id", part_rows=256)
    plan = make_plan([str(corpus)], job)
    graph.write_bytes(b"damaged again")
    worker = PartWorker(model, plan, ModelOptions(english_export, "cpu", "fp32"), job, str(output),
                        None)  # fmt: skip
    worker.start()
    assert graph.read_bytes() == original
    meta = worker.run(plan.parts[1], 257, None)
    assert meta.rows == 256 and (output / "part-000001.parquet").is_file()
