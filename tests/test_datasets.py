"""Datasets, not files: one job (plan -> parts -> commit) over directories, globs, several
paths and object storage. Every record is read exactly once wherever the parts are cut, a
killed run resumes to the bytes of an uninterrupted one, and a changed input is named.

Object storage is a real S3-protocol server (moto's server mode) started on 127.0.0.1 by
these tests; the job reaches it through pyarrow.fs and `AWS_ENDPOINT_URL`, the code path a
user's AWS or MinIO bucket takes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from albert_onnx.errors import CorpusError, OutputError
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.jobs.commit import open_output
from albert_onnx.runtime.jobs.part import iter_items
from albert_onnx.runtime.jobs.plan import make_plan
from albert_onnx.runtime.options import JobOptions

from conftest import OFFLINE_ENV, Interrupted, real_texts, run_cli, upload
from conftest import interrupt_after_parts as stop_after

TEXTS = real_texts()[:60]


@pytest.fixture(scope="module")
def expected(embedder) -> np.ndarray:
    return embedder.embed(TEXTS)


def write_jsonl(path: Path, texts: list[str], first_id: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts, start=first_id):
            f.write(json.dumps({"text": text, "id": f"doc{i}"}) + "\n")
    return path


def sharded(root: Path, texts: list[str], files: int) -> Path:
    """TEXTS as FILES JSONL files under ROOT (names sort in order), with ids doc0, doc1..."""
    size = -(-len(texts) // files)
    for n in range(files):
        write_jsonl(root / f"shard-{n:02d}.jsonl", texts[n * size : (n + 1) * size], n * size)
    return root


def read_npz(path: Path) -> tuple[list, np.ndarray]:
    saved = np.load(path)
    return saved["ids"].tolist(), saved["embeddings"]


# -- inputs: directories, globs, several paths ----------------------------------------------


class TestInputs:
    def test_a_directory_is_its_files_in_name_order_without_hidden_ones(
        self, embedder, expected, tmp_path
    ):
        root = sharded(tmp_path / "corpus", TEXTS, 3)
        (root / "_SUCCESS").write_text("")
        (root / ".shard-00.jsonl.crc").write_text("checksum")
        write_jsonl(root / "_temporary" / "stale.jsonl", ["never read"])
        write_jsonl(root / "year=2025" / "shard-99.jsonl", ["read last: sorted by path"], 99)
        embed_corpus(embedder, root, tmp_path / "v.npz", id_field="id")
        ids, vectors = read_npz(tmp_path / "v.npz")
        assert ids == [f"doc{i}" for i in range(60)] + ["doc99"]
        assert np.abs(vectors[:60] - expected).max() < 1e-5

    def test_a_glob_and_several_paths_are_one_corpus(self, embedder, expected, tmp_path):
        root = sharded(tmp_path / "corpus", TEXTS, 4)
        write_jsonl(root / "notes.txt.jsonl.bak", ["not matched"])
        embed_corpus(embedder, str(root / "shard-*.jsonl"), tmp_path / "glob.npz", id_field="id")
        files = [root / "shard-02.jsonl", root / "shard-03.jsonl", root / "shard-00.jsonl"]
        embed_corpus(embedder, files, tmp_path / "paths.npz", id_field="id")
        assert read_npz(tmp_path / "glob.npz")[0] == [f"doc{i}" for i in range(60)]
        ids, vectors = read_npz(tmp_path / "paths.npz")
        assert ids == [f"doc{i}" for i in [*range(30, 60), *range(15)]]  # in the order given
        assert np.abs(vectors[:30] - expected[30:]).max() < 1e-5

    def test_a_recursive_glob(self, embedder, tmp_path):
        write_jsonl(tmp_path / "c" / "2024" / "a.jsonl", ["one"], 1)
        write_jsonl(tmp_path / "c" / "2025" / "b.jsonl", ["two"], 2)
        write_jsonl(tmp_path / "c" / "top.jsonl", ["zero"], 0)
        embed_corpus(embedder, str(tmp_path / "c" / "**" / "*.jsonl"), tmp_path / "v.npz",
                     id_field="id")  # fmt: skip
        assert read_npz(tmp_path / "v.npz")[0] == ["doc1", "doc2", "doc0"]  # sorted by path

    def test_without_an_id_field_ids_are_lines_or_file_and_line(self, embedder, tmp_path):
        root = sharded(tmp_path / "corpus", TEXTS[:6], 2)
        embed_corpus(embedder, root / "shard-00.jsonl", tmp_path / "one.npz")
        embed_corpus(embedder, root, tmp_path / "many.npz")
        assert read_npz(tmp_path / "one.npz")[0] == [1, 2, 3]
        assert read_npz(tmp_path / "many.npz")[0] == [
            "shard-00.jsonl:1", "shard-00.jsonl:2", "shard-00.jsonl:3",
            "shard-01.jsonl:1", "shard-01.jsonl:2", "shard-01.jsonl:3",
        ]  # fmt: skip

    @pytest.mark.parametrize(
        ("names", "message"),
        [
            (["a.jsonl", "b.csv"], r"the inputs mix formats \(a\.jsonl is JSONL, b\.csv is CSV\)"),
            (["a.jsonl", "b.parquet"], "mix formats"),
        ],
    )
    def test_mixed_formats_are_refused_in_one_sentence(self, embedder, tmp_path, names, message):
        for name in names:
            (tmp_path / "c" / name).parent.mkdir(exist_ok=True)
            (tmp_path / "c" / name).write_bytes(b"")
        with pytest.raises(CorpusError, match=message):
            embed_corpus(embedder, tmp_path / "c", tmp_path / "v.npy")
        assert not (tmp_path / "v.npy.parts").exists()

    def test_nothing_to_read_is_one_sentence(self, embedder, tmp_path):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "README.md").write_text("no corpus here")
        with pytest.raises(CorpusError, match=r"no input files in this directory \(it holds "):
            embed_corpus(embedder, tmp_path / "empty", tmp_path / "v.npy")
        with pytest.raises(CorpusError, match="no file matches this pattern"):
            embed_corpus(embedder, str(tmp_path / "*.jsonl"), tmp_path / "v.npy")
        with pytest.raises(CorpusError, match="no such file or directory"):
            embed_corpus(embedder, tmp_path / "missing.jsonl", tmp_path / "v.npy")

    def test_every_format_as_a_sharded_dataset(self, embedder, expected, tmp_path):
        texts = [t.replace("\n", " ") for t in TEXTS]
        root = tmp_path / "each"
        halves = (texts[:30], texts[30:])
        for n, half in enumerate(halves):
            start = n * 30
            ids = [f"doc{i}" for i in range(start, start + 30)]
            (root / "parquet").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"id": ids, "text": half}),
                           root / "parquet" / f"p{n}.parquet", row_group_size=7)  # fmt: skip
            (root / "csv").mkdir(exist_ok=True)
            rows = "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}"\n'
                           for i, t in zip(ids, half, strict=True))  # fmt: skip
            (root / "csv" / f"c{n}.csv").write_text("id,text\n" + rows)
            (root / "gz").mkdir(exist_ok=True)
            lines = "".join(json.dumps({"id": i, "text": t}) + "\n"
                            for i, t in zip(ids, half, strict=True))  # fmt: skip
            (root / "gz" / f"g{n}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
        reference = embedder.embed(texts)
        for fmt in ("parquet", "csv", "gz"):
            embed_corpus(embedder, root / fmt, tmp_path / f"{fmt}.npz", id_field="id",
                         part_rows=10)  # fmt: skip
            ids, vectors = read_npz(tmp_path / f"{fmt}.npz")
            assert ids == [f"doc{i}" for i in range(60)], fmt
            assert np.abs(vectors - reference).max() < 1e-5, fmt
        assert np.abs(reference - expected).max() < 1e-2  # the same texts, spaces for newlines


# -- the plan: from metadata, deterministic, every line exactly once ------------------------

TRICKY = (
    "\ufeff" + json.dumps({"text": "first, after a BOM"}) + "\r\n"
    + json.dumps({"text": "CRLF ends this one"}) + "\r\n"
    + "\n"  # a blank line
    + json.dumps({"text": "ünïcödé — multi-byte ✓ characters 日本語"}, ensure_ascii=False) + "\n"
    + "not json at all\n"
    + json.dumps({"text": "x" * 70}) + "\n"
    + json.dumps({"text": "the last line has no line end"})
)  # fmt: skip


def test_byte_ranges_read_every_line_exactly_once_wherever_the_cut_falls(tmp_path):
    """Every part size from 1 byte up: boundaries mid-line, between CR and LF, inside a
    multi-byte character, before a last line without its end."""
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(TRICKY.encode("utf-8"))
    whole = JobOptions(on_error="skip")
    reference = list(iter_items(make_plan([str(path)], whole), whole))
    assert [type(i).__name__ for _, i in reference] == [
        "Record", "Record", "Blank", "Record", "BadLine", "Record", "Record",
    ]  # fmt: skip
    for size in range(1, path.stat().st_size + 2):
        options = JobOptions(on_error="skip", part_bytes=size)
        plan = make_plan([str(path)], options)
        assert len(plan.parts) == -(-path.stat().st_size // size)
        assert list(iter_items(plan, options)) == reference, f"part_bytes={size}"


def test_the_plan_is_deterministic_and_made_from_metadata(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for n in range(3):
        pq.write_table(pa.table({"text": [f"t{i}" for i in range(25)]}),
                       root / f"p{n}.parquet", row_group_size=10)  # fmt: skip
    options = JobOptions(part_rows=20)
    plan = make_plan([str(root)], options)
    assert plan == make_plan([str(root)], options)
    # row groups of 10, 10 and 5 rows: grouped up to 20 rows, never split
    assert [(p.file, p.start, p.end, p.rows, p.first_line) for p in plan.parts] == [
        (f, *span) for f in range(3) for span in ((0, 2, 20, 1), (2, 3, 5, 21))
    ]


@pytest.mark.parametrize("parts", [1, 2, 7])
def test_every_record_exactly_once_in_1_2_or_7_parts(embedder, expected, tmp_path, parts):
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    size = -(-corpus.stat().st_size // parts)
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npz", id_field="id", part_bytes=size)
    assert summary.parts == parts
    ids, vectors = read_npz(tmp_path / "v.npz")
    assert ids == [f"doc{i}" for i in range(60)] and summary.stats.docs == 60
    assert np.abs(vectors - expected).max() < 1e-5


# -- bad records in a sharded input --------------------------------------------------------


def test_a_bad_record_names_its_file_and_line_inside_a_sharded_input(embedder, tmp_path):
    root = sharded(tmp_path / "c", TEXTS, 3)
    lines = (root / "shard-01.jsonl").read_text().splitlines()
    lines[16] = '{"text": 5}'  # line 17 of the second file, in its third part
    (root / "shard-01.jsonl").write_text("\n".join(lines) + "\n")
    size = (root / "shard-01.jsonl").stat().st_size // 5
    with pytest.raises(CorpusError, match=r"shard-01\.jsonl:17: field 'text' is int"):
        embed_corpus(embedder, root, tmp_path / "v.npz", id_field="id", part_bytes=size)
    summary = embed_corpus(embedder, root, tmp_path / "out", id_field="id", part_bytes=size,
                           on_error="skip")  # fmt: skip
    errors = [json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert errors == [
        {"file": "shard-01.jsonl", "line": 17, "reason": "field 'text' is int, not a string"}
    ]
    assert summary.stats.docs == 59 and summary.stats.skipped == 1


def test_the_first_id_sets_the_kind_of_every_id_after_it(embedder, tmp_path):
    root = tmp_path / "c"
    write_jsonl(root / "a.jsonl", TEXTS[:3])  # doc0, doc1, doc2
    with open(root / "b.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "id": 3 + i}) + "\n" for i, t in enumerate(TEXTS[3:6]))
    kinds = r"field 'id' is an integer, but this corpus's ids are strings"
    with pytest.raises(CorpusError, match=rf"b\.jsonl:1: {kinds}"):
        embed_corpus(embedder, root, tmp_path / "v.npz", id_field="id")
    summary = embed_corpus(embedder, root, tmp_path / "out", id_field="id", on_error="skip")
    assert summary.stats.docs == 3 and summary.stats.skipped == 3
    assert open_output(str(tmp_path / "out"))[0]["rows"] == 3


def test_parquet_files_whose_ids_differ_in_kind_are_refused_before_any_work(embedder, tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), root / "a.parquet")
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["c", "d"]}), root / "b.parquet")
    with pytest.raises(CorpusError, match=r"ids must all be strings or all integers: column "
                       r"'id' holds integers in a\.parquet and strings in b\.parquet"):  # fmt: skip
        embed_corpus(embedder, root, tmp_path / "out", id_field="id")
    assert not (tmp_path / "out").exists()


# -- resume and force ------------------------------------------------------------------------


def run_and_kill(args: list, parts_dir: Path, parts_before_kill: int) -> None:
    """Run `albert-onnx ARGS` and SIGKILL it once PARTS_BEFORE_KILL part files exist."""
    process = subprocess.Popen(
        [sys.executable, "-m", "albert_onnx", *map(str, args)], env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while len(list(parts_dir.glob("part-*.parquet"))) < parts_before_kill:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)


@pytest.mark.parametrize("output", ["v.npy", "vectors"])
def test_sigkill_then_resume_gives_the_bytes_of_an_uninterrupted_run(
    english_export, tmp_path, output
):
    root = sharded(tmp_path / "c", real_texts()[:240], 3)
    args = ["embed", root, "--model", english_export, "--id-field", "id", "--no-progress",
            "--provider", "cpu", "--precision", "fp32", "--part-bytes", "6000"]  # fmt: skip
    assert run_cli(*args, "-o", tmp_path / "whole" / output).returncode == 0
    killed = tmp_path / "killed" / output
    parts_dir = killed.with_name(killed.name + ".parts") if output.endswith(".npy") else killed
    run_and_kill([*args, "-o", killed], parts_dir, 3)
    assert not (parts_dir / "_manifest.json").exists() and not killed.is_file()
    resumed = run_cli(*args, "-o", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "parts were done" in resumed.stdout
    whole = tmp_path / "whole" / output
    if output.endswith(".npy"):
        assert killed.read_bytes() == whole.read_bytes()
        ids = Path(str(killed) + ".ids.jsonl").read_bytes()
        assert ids == Path(str(whole) + ".ids.jsonl").read_bytes()
        assert not parts_dir.exists()
    else:
        names = sorted(p.name for p in whole.iterdir())
        assert names == sorted(p.name for p in killed.iterdir())
        for name in names:
            assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.parametrize(
    ("change", "named"),
    [("edited", "shard-01.jsonl was modified"), ("appended to", "shard-01.jsonl was appended to"),
     ("removed", "shard-01.jsonl was removed"), ("added", "shard-03.jsonl was added")],
)  # fmt: skip
def test_a_changed_input_is_named_when_resuming(embedder, tmp_path, change, named):
    root = sharded(tmp_path / "c", TEXTS, 3)
    output = tmp_path / "v.npy"
    interrupt_after_parts(embedder, root, output, 1, id_field="id", part_bytes=2000)
    shard = root / "shard-01.jsonl"
    if change == "edited":
        data = shard.read_bytes()
        shard.write_bytes(data.replace(b"doc2", b"DOC2", 1))  # same size
        os.utime(shard, ns=(time.time_ns(), time.time_ns() + 10**9))
    elif change == "appended to":
        with open(shard, "a") as f:
            f.write(json.dumps({"text": "more", "id": "doc99"}) + "\n")
    elif change == "removed":
        shard.unlink()
    else:
        write_jsonl(root / "shard-03.jsonl", ["new"], 100)
    with pytest.raises(OutputError, match=rf"the input changed since the interrupted run: {named}"):
        embed_corpus(embedder, root, output, id_field="id", part_bytes=2000, resume=True)


def test_an_input_changed_behind_the_resume_check_is_caught_at_commit(embedder, tmp_path):
    """Rewritten to the same size and modification time, a file passes the resume check; the
    parts then no longer cover it exactly, and the commit refuses to finish the output."""
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    output = tmp_path / "out"
    interrupt_after_parts(embedder, corpus, output, 1, id_field="id", part_bytes=2000)
    before = corpus.stat()
    data = corpus.read_bytes().replace(b'"doc0"', b'"doc0xy"').replace(b'"doc59"', b'"d59"')
    corpus.write_bytes(data)  # every line after the first two bytes later, the size the same
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = rf"c\.jsonl: its parts read [\d,]+ bytes of its {before.st_size:,}: the input"
    with pytest.raises(OutputError, match=rf"{changed} changed after the job started"):
        embed_corpus(embedder, corpus, output, id_field="id", part_bytes=2000, resume=True)
    assert not (output / "_manifest.json").exists()


def interrupt_after_parts(embedder, inputs, output: Path, parts: int, **options) -> None:
    with pytest.raises(Interrupted):
        embed_corpus(embedder, inputs, output, on_batch=stop_after(output, parts), **options)


def test_the_state_is_written_once_whatever_the_parts(embedder, tmp_path):
    """Nothing grows with the run: the state is written at its start; each part carries
    its own counts."""
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    output = tmp_path / "out"
    interrupt_after_parts(embedder, corpus, output, 2, part_bytes=1000)
    state = (output / "_state.json").read_bytes()
    stamp = (output / "_state.json").stat().st_mtime_ns
    interrupt_after_parts(embedder, corpus, output, 5, part_bytes=1000, resume=True)
    assert (output / "_state.json").read_bytes() == state
    assert (output / "_state.json").stat().st_mtime_ns == stamp


def test_force_replaces_only_what_albert_onnx_wrote(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS[:4])
    output = tmp_path / "out"
    embed_corpus(embedder, corpus, output)
    with pytest.raises(OutputError, match=r"already exists; pass --force"):
        embed_corpus(embedder, corpus, output)
    (output / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds notes\.txt, which albert-onnx did not write"):
        embed_corpus(embedder, corpus, output, force=True)
    (output / "notes.txt").unlink()
    embed_corpus(embedder, corpus, output, force=True)
    assert (output / "_manifest.json").is_file()


def test_an_output_inside_an_input_directory_is_refused(embedder, tmp_path):
    root = sharded(tmp_path / "c", TEXTS[:4], 2)
    with pytest.raises(OutputError, match="would overwrite the input directory"):
        embed_corpus(embedder, root, root / "vectors")


def test_an_incomplete_directory_output_is_refused_by_its_reader(embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    output = tmp_path / "out"
    interrupt_after_parts(embedder, corpus, output, 1, part_bytes=2000, id_field="id")
    with pytest.raises(OutputError, match=r"no _manifest\.json, so the output is not complete"):
        open_output(str(output))
    embed_corpus(embedder, corpus, output, part_bytes=2000, id_field="id", resume=True)
    manifest, parts = open_output(str(output))
    ids = [i for chunk in parts.ids() for i in chunk]
    assert manifest["rows"] == 60 and ids == [f"doc{i}" for i in range(60)]


# -- object storage: a real S3-protocol server ----------------------------------------------


def test_s3_in_and_out_gives_the_local_vectors(s3, embedder, expected, tmp_path, monkeypatch):
    env, store = s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = sharded(tmp_path / "c", TEXTS, 3)
    upload(store, root, "corpus/sharded")
    summary = embed_corpus(embedder, "s3://corpus/sharded/", "s3://corpus/vectors",
                           id_field="id", part_bytes=3000)  # fmt: skip
    assert summary.parts > 3
    manifest, parts = open_output("s3://corpus/vectors")
    ids = [i for chunk in parts.ids() for i in chunk]
    vectors = np.concatenate([v for _, v, _ in parts.chunks()])
    assert manifest["rows"] == 60 and ids == [f"doc{i}" for i in range(60)]
    assert np.abs(vectors - expected).max() < 1e-5
    listed = store.get_file_info(pafs.FileSelector("corpus/vectors"))
    assert "_state.json" not in {i.base_name for i in listed}


def test_s3_through_the_cli_with_a_glob_into_a_local_file(s3, english_export, tmp_path):
    env, store = s3
    root = sharded(tmp_path / "c", TEXTS[:9], 3)
    upload(store, root, "corpus/globbed")
    result = run_cli("embed", "s3://corpus/globbed/shard-0[01].jsonl", "-o", tmp_path / "v.npz",
                     "--model", english_export, "--id-field", "id", "--no-progress",
                     "--provider", "cpu", **env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_npz(tmp_path / "v.npz")[0] == [f"doc{i}" for i in range(6)]
    missing = run_cli("embed", "s3://corpus/nothing-here/", "-o", tmp_path / "w.npz",
                      "--model", english_export, **env)  # fmt: skip
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "s3://corpus/nothing-here/: no such file or directory" in missing.stderr
