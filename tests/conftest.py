"""Small ALBERT checkpoints built from AlbertConfig (random weights, fixed seed) with the
real tokenizers in tests/data, and their exports, shared across the test session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyarrow import fs as pafs

DATA = Path(__file__).parent / "data"
os.environ.pop("RAY_ADDRESS", None)  # Ray tests start their own instances and clusters
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ENGLISH_TOKENIZER_FILES = (
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SMALL = dict(
    embedding_size=32,
    hidden_size=64,
    num_hidden_layers=12,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
)


def sts_sentences() -> list[str]:
    sentences = []
    for split in ("train", "dev", "test"):
        for line in (
            (DATA / "corpora" / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines()
        ):
            sentences.extend(line.split("\t")[5:7])
    return sentences


def build_checkpoint(
    directory: Path,
    *,
    vocab: str = "english",
    seed: int = 0,
    tokenizer_files: tuple[str, ...] = ENGLISH_TOKENIZER_FILES,
    **config,
) -> Path:
    """save_pretrained a random-weight AlbertModel beside a real tokenizer."""
    import torch
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(seed)
    settings = {**SMALL, **config}
    if vocab == "english":
        settings.setdefault("vocab_size", 30000)
    else:
        settings.setdefault("vocab_size", 21128)
        settings.setdefault("pad_token_id", 0)
        settings.setdefault("hidden_act", "gelu")
    AlbertModel(AlbertConfig(**settings)).save_pretrained(directory)
    if vocab == "english":
        for name in tokenizer_files:
            shutil.copy(DATA / "albert-base-v2" / name, directory)
    else:
        shutil.copy(DATA / "albert-chinese" / "vocab.txt", directory)
        (directory / "tokenizer_config.json").write_text(
            json.dumps(
                {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
            )
        )
    return directory


def build_sentence_transformer(directory: Path, pooling: str, normalize: bool) -> Path:
    """The sentence-transformers layout: the transformer at the root, modules.json, pooling."""
    build_checkpoint(directory, seed=1)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": SMALL["hidden_size"],
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    return directory


@pytest.fixture(scope="session")
def english_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "albert-small")


@pytest.fixture(scope="session")
def english_export(english_checkpoint, tmp_path_factory) -> Path:
    """The small English model exported with every variant."""
    from albert_onnx.export.exporter import export_model

    output = tmp_path_factory.mktemp("export") / "albert-small-onnx"
    export_model(str(english_checkpoint), output, quantize=True, fp16=True)
    return output


@pytest.fixture(scope="session")
def embedder(english_export):
    """The small English model's fp32 graph on the CPU: what the job tests embed with."""
    from albert_onnx import Embedder

    return Embedder(english_export, provider="cpu", precision="fp32")


def stop_groups(processes: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM to each process's group (started with start_new_session), then SIGKILL to
    any still running after TIMEOUT."""
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def real_texts() -> list[str]:
    """Real text of mixed lengths: WikiText paragraphs and headings, STS-B sentences."""
    wiki = (DATA / "corpora" / "wikitext2_test_head300.txt").read_text(encoding="utf-8")
    paragraphs = [line.strip() for line in wiki.splitlines() if line.strip()][:120]
    return [text for pair in zip(paragraphs, sts_sentences()[:120], strict=True) for text in pair]


def write_jsonl(path: Path, texts: list[str], id_prefix: str = "doc") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"text": text, "doc_id": f"{id_prefix}{i}"}) + "\n")
    return path


def run_cli(*args, **env) -> subprocess.CompletedProcess:
    """`albert-onnx ARGS` as a user runs it: a separate process, offline."""
    return subprocess.run(
        [sys.executable, "-m", "albert_onnx", *map(str, args)],
        capture_output=True,
        text=True,
        env={**OFFLINE_ENV, "COLUMNS": "200", **env},  # usage errors unwrapped
        timeout=600,
    )


def cli_peak_rss_mb(*args) -> float:
    """Run `albert-onnx ARGS` and return that process's own peak RSS (VmHWM, which exec
    resets; a child's ru_maxrss would include this test process's, inherited at fork)."""
    code = (
        "import atexit, sys\n"
        "def report():\n"
        "    status = open('/proc/self/status').read()\n"
        "    sys.stderr.write('VmHWM ' + status.split('VmHWM:')[1].split()[0] + '\\n')\n"
        "atexit.register(report)\n"
        "from albert_onnx.cli import app\n"
        "sys.argv = ['albert-onnx', *sys.argv[1:]]\n"
        "app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, env=OFFLINE_ENV, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("VmHWM ", 1)[1].split()[0]) / 1024


class Interrupted(Exception):
    """Stands in for Ctrl-C: raised from inside a run, it leaves the run's parts behind."""


def interrupt_after_parts(output: Path, parts: int):
    """An on_batch callback that interrupts the run once PARTS part files are on disk (of a
    single-file OUTPUT, in OUTPUT.parts/; of a directory output, in it)."""
    directory = output.with_name(output.name + ".parts") if output.suffix else output

    def on_batch(docs: int, tokens: int, padded: int) -> None:
        if len(list(directory.glob("part-*.parquet"))) >= parts:
            raise Interrupted

    return on_batch


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free port of 127.0.0.1, stopped at the end; yields the
    environment that points pyarrow (and the CLI) at it, and a filesystem to fill it."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }  # fmt: skip
        store = pafs.S3FileSystem(
            access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
            endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True,
        )  # fmt: skip
        for bucket in ("corpus", "ray"):
            store.create_dir(bucket)
        yield env, store
    finally:
        server.terminate()
        server.wait(timeout=30)


def upload(store, local: Path, key: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with store.open_output_stream(f"{key}/{path.relative_to(local)}") as out:
                out.write(path.read_bytes())
