"""Every input format: good rows with exact ids, bad rows named FILE:ROW (or LINE), a file
whose content disagrees with its name, resume and fingerprints, and a large Parquet file
streamed in flat memory."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_onnx.errors import CorpusError, OutputError
from albert_onnx.runtime.job import embed_corpus

from conftest import (
    OFFLINE_ENV,
    Interrupted,
    cli_peak_rss_mb,
    interrupt_after_parts,
    real_texts,
    run_cli,
    sts_sentences,
)

TEXTS = [
    "a plain sentence",
    'quotes "inside", and a comma',
    "a line\nbreak inside the value",
    "tab\tinside",
    "",
    "ünïcode — and emoji are text too",
]


@pytest.fixture(scope="module")
def expected(embedder) -> np.ndarray:
    return embedder.embed(TEXTS)


def read_npz(path):
    saved = np.load(path)
    return saved["ids"].tolist(), saved["embeddings"]


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["doc", "body"])
        writer.writerows(rows)
    return path


class TestEveryFormat:
    def test_parquet_with_string_and_integer_ids(self, embedder, expected, tmp_path):
        for ids in ([f"d{i}" for i in range(6)], [10, -3, 2**62, 0, 7, 8]):
            path = tmp_path / "c.parquet"
            pq.write_table(pa.table({"doc": ids, "body": TEXTS}), path, row_group_size=2)
            embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc",
                         force=True)  # fmt: skip
            got_ids, vectors = read_npz(tmp_path / "v.npz")
            assert got_ids == ids and np.abs(vectors - expected).max() < 1e-5

    @pytest.mark.parametrize(
        "kind", ["dictionary (pandas Categorical)", "string_view", "large_string"]
    )
    def test_parquet_text_of_every_string_kind(self, embedder, expected, tmp_path, kind):
        texts, ids = pa.array(TEXTS), pa.array([f"d{i}" for i in range(6)])
        if kind.startswith("dictionary"):
            texts, ids = texts.dictionary_encode(), ids.dictionary_encode()
        else:
            texts, ids = texts.cast(getattr(pa, kind)()), ids.cast(getattr(pa, kind)())
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"doc": ids, "body": texts}), path)
        assert str(pq.read_schema(path).field("body").type) != "string"  # the kind survives
        embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [f"d{i}" for i in range(6)] and np.abs(vectors - expected).max() < 1e-5

    @pytest.mark.parametrize(("name", "delimiter"), [("c.csv", ","), ("c.tsv", "\t")])
    def test_csv_and_tsv_with_quotes_and_newlines_in_values(
        self, embedder, expected, tmp_path, name, delimiter
    ):
        path = write_csv(tmp_path / name, [[f"d{i}", t] for i, t in enumerate(TEXTS)], delimiter)
        embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [f"d{i}" for i in range(6)]  # CSV ids are the cells' text
        assert np.abs(vectors - expected).max() < 1e-5

    def test_gzip_csv(self, embedder, expected, tmp_path):
        plain = write_csv(tmp_path / "plain.csv", [[i, t] for i, t in enumerate(TEXTS)])
        path = tmp_path / "c.csv.gz"
        path.write_bytes(gzip.compress(plain.read_bytes()))
        embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [str(i) for i in range(6)] and np.abs(vectors - expected).max() < 1e-5

    def test_txt_one_text_per_line(self, embedder, tmp_path):
        lines = ["first line", "", "third line", "fourth\r"]
        path = tmp_path / "c.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary = embed_corpus(embedder, path, tmp_path / "v.npz")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [1, 3, 4] and summary.stats.blank_lines == 1
        expected = embedder.embed(["first line", "third line", "fourth"])
        assert np.abs(vectors - expected).max() < 1e-5

    def test_txt_gz(self, embedder, tmp_path):
        path = tmp_path / "c.txt.gz"
        path.write_bytes(gzip.compress(b"one\ntwo\n"))
        embed_corpus(embedder, path, tmp_path / "v.npz")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [1, 2] and np.abs(vectors - embedder.embed(["one", "two"])).max() < 1e-5

    def test_jsonl_gz(self, embedder, expected, tmp_path):
        path = tmp_path / "c.jsonl.gz"
        rows = "".join(json.dumps({"text": t, "id": f"g{i}"}) + "\n" for i, t in enumerate(TEXTS))
        path.write_bytes(gzip.compress(rows.encode()))
        embed_corpus(embedder, path, tmp_path / "v.npz", id_field="id")
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == [f"g{i}" for i in range(6)] and np.abs(vectors - expected).max() < 1e-5

    def test_standard_input(self, english_export, expected, tmp_path):
        rows = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
        args = ["embed", "-", "-o", tmp_path / "v.npz", "--model", english_export,
                "--provider", "cpu", "--precision", "fp32", "--no-progress"]  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "albert_onnx", *map(str, args)],
            input=rows, capture_output=True, text=True, env=OFFLINE_ENV, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        got_ids, vectors = read_npz(tmp_path / "v.npz")
        assert got_ids == list(range(1, 7)) and np.abs(vectors - expected).max() < 1e-5
        again = subprocess.run(
            [sys.executable, "-m", "albert_onnx", *map(str, args), "--resume"],
            input=rows, capture_output=True, text=True, env=OFFLINE_ENV, timeout=600,
        )  # fmt: skip
        assert again.returncode == 1 and "standard input cannot be read again" in again.stderr
        zipped = subprocess.run(
            [sys.executable, "-m", "albert_onnx", *map(str, args), "--force"],
            input=gzip.compress(rows.encode()), capture_output=True, env=OFFLINE_ENV, timeout=600,
        )  # fmt: skip
        assert zipped.returncode == 1
        assert b"standard input is gzip-compressed, not JSONL text" in zipped.stderr


class TestBadRows:
    def test_parquet_null_text_names_file_and_row(self, embedder, tmp_path):
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"text": ["ok", "ok", None, "ok"], "id": [1, 2, 3, None]}), path)
        with pytest.raises(CorpusError, match=r"c\.parquet:3: field 'text' is null"):
            embed_corpus(embedder, path, tmp_path / "v.npy", id_field="id")
        summary = embed_corpus(embedder, path, tmp_path / "v.npy", id_field="id",
                               on_error="skip", force=True)  # fmt: skip
        errors = [json.loads(x) for x in (tmp_path / "v.npy.errors.jsonl").read_text().split("\n")
                  if x]  # fmt: skip
        assert errors == [
            {"file": str(path), "line": 3, "reason": "field 'text' is null"},  # the data row
            {"file": str(path), "line": 4, "reason": "field 'id' is null"},
        ]
        assert summary.stats.docs == 2

    def test_csv_malformed_row_keeps_every_rows_number(self, embedder, tmp_path):
        path = tmp_path / "c.csv"
        path.write_text(
            'doc,body\n1,fine\n2,"too",many,fields\n\n4,"quoted, with\na newline"\n',
            encoding="utf-8",
        )
        with pytest.raises(CorpusError, match=r"c\.csv:2: has 4 fields, the header 2"):
            embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        summary = embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body",
                               on_error="skip", force=True)  # fmt: skip
        assert read_npz(tmp_path / "v.npz")[0] == [1, 4]  # row numbers: the bad and blank count
        assert (summary.stats.skipped, summary.stats.blank_lines) == (1, 1)
        errors = (tmp_path / "v.npz.errors.jsonl").read_text()
        assert json.loads(errors) == {"file": str(path), "line": 2,
                                      "reason": "has 4 fields, the header 2"}  # fmt: skip

    @pytest.mark.parametrize("suffix", [".csv", ".tsv"])
    def test_a_quote_out_of_place_is_a_bad_row_that_swallows_nothing(
        self, embedder, suffix, tmp_path
    ):
        sep = "\t" if suffix == ".tsv" else ","
        path = tmp_path / f"c{suffix}"
        path.write_text(f'doc{sep}body\n1{sep}"Stop!" she said\n2{sep}fine\n3{sep}also fine\n')
        with pytest.raises(CorpusError, match=rf"c\{suffix}:1: malformed at line 2 .* doubled"):
            embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        summary = embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body",
                               id_field="doc", on_error="skip", force=True)  # fmt: skip
        assert read_npz(tmp_path / "v.npz")[0] == ["2", "3"]  # not "Stop! she said"
        errors = [json.loads(x) for x in (tmp_path / "v.npz.errors.jsonl").read_text().splitlines()]
        assert [e["line"] for e in errors] == [1] and summary.stats.skipped == 1

    def test_a_quote_never_closed_stops_the_job_even_when_skipping(self, embedder, tmp_path):
        path = tmp_path / "c.csv"
        path.write_text('doc,body\n1,fine\n2,"unclosed\n3,swallowed\n4,swallowed\n')
        with pytest.raises(CorpusError, match=r"c\.csv: line 3: a quote .* never closed.* line 5"):
            embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc",
                         on_error="skip")  # fmt: skip
        assert not (tmp_path / "v.npz").exists()

    def test_csv_cell_that_is_not_utf8_is_a_bad_row(self, embedder, tmp_path):
        path = tmp_path / "c.csv"
        path.write_bytes(b"doc,body\n1,fine\n2,caf\xe9\n3,fine too\n")
        with pytest.raises(CorpusError, match=r"c\.csv:2: field 'body' is not valid UTF-8"):
            embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc")
        embed_corpus(embedder, path, tmp_path / "v.npz", text_field="body", id_field="doc",
                     on_error="skip", force=True)  # fmt: skip
        assert read_npz(tmp_path / "v.npz")[0] == ["1", "3"]

    @pytest.mark.parametrize("header", ["doc,text,text", "text,doc,doc"])
    def test_a_column_named_twice_is_refused_not_guessed(self, embedder, tmp_path, header):
        path = tmp_path / "c.csv"
        path.write_text(f"{header}\n1,a,b\n")
        twice = header.split(",")[-1]
        with pytest.raises(CorpusError, match=f"2 columns are named '{twice}'"):
            embed_corpus(embedder, path, tmp_path / "v.npz", id_field="doc")
        assert not (tmp_path / "v.npz").exists()

    def test_csv_missing_column(self, embedder, tmp_path):
        path = write_csv(tmp_path / "c.csv", [["1", "x"]])
        with pytest.raises(CorpusError, match=r"no column 'text' \(it has doc, body\)"):
            embed_corpus(embedder, path, tmp_path / "v.npz")

    def test_txt_invalid_utf8_names_the_line(self, embedder, tmp_path):
        path = tmp_path / "c.txt"
        path.write_bytes(b"fine\nbad \xff byte\n")
        with pytest.raises(CorpusError, match=r"c\.txt:2: invalid UTF-8"):
            embed_corpus(embedder, path, tmp_path / "v.npy")

    @pytest.mark.parametrize(
        ("table", "options", "message"),
        [
            ({"body": ["x"]}, {}, r"no column 'text' \(it has body\)"),
            ({"text": [1]}, {}, "column 'text' is int64, not text"),
            ({"text": ["x"], "id": [1.5]}, {"id_field": "id"}, "column 'id' is double"),
        ],
    )
    def test_a_wrong_column_stops_before_the_output_is_touched(
        self, embedder, tmp_path, table, options, message
    ):
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table(table), path)
        (tmp_path / "v.npy").write_text("precious")
        with pytest.raises(CorpusError, match=message):
            embed_corpus(embedder, path, tmp_path / "v.npy", force=True, **options)
        assert (tmp_path / "v.npy").read_text() == "precious"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.jsonl", gzip.compress(b'{"text": "x"}\n'), "is gzip-compressed, not JSONL text; "
         "name it c.jsonl.gz"),
        ("c.csv", b"PAR1....", "is a Parquet file, not CSV text; name it .parquet"),
        ("c.parquet", b"doc,body\n", "not a Parquet file"),
        ("c.jsonl.gz", b'{"text": "x"}\n', "named .gz but not gzip-compressed"),
        ("c.xlsx", b"PK\x03\x04", "unknown input format"),
        ("c.parquet", b"PAR1 and then nothing a Parquet reader wants",
         "not a readable Parquet file"),
        ("c.jsonl.gz", gzip.compress(b'{"text": "x"}\n' * 1000)[:60],
         "the gzip stream is broken after line"),
    ],
)  # fmt: skip
def test_content_that_disagrees_with_the_name_is_one_sentence(
    english_export, tmp_path, name, content, message
):
    (tmp_path / name).write_bytes(content)
    result = run_cli("embed", tmp_path / name, "-o", tmp_path / "v.npy", "--model", english_export)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr


class TestResume:
    def test_parquet_resumes_to_the_same_bytes_and_refuses_a_changed_file(self, embedder, tmp_path):
        path = tmp_path / "c.parquet"
        texts = real_texts()[:60]
        pq.write_table(pa.table({"text": texts, "id": list(range(60))}), path, row_group_size=7)
        options = {"id_field": "id", "window_texts": 10, "part_rows": 21}  # 3 row groups a part
        embed_corpus(embedder, path, tmp_path / "full.npz", **options)
        with pytest.raises(Interrupted):
            stop = interrupt_after_parts(tmp_path / "cut.npz", 2)
            embed_corpus(embedder, path, tmp_path / "cut.npz", on_batch=stop, **options)
        summary = embed_corpus(embedder, path, tmp_path / "cut.npz", resume=True, **options)
        assert (summary.resumed_parts, summary.parts) == (2, 3)
        assert (tmp_path / "cut.npz").read_bytes() == (tmp_path / "full.npz").read_bytes()

        with pytest.raises(Interrupted):
            stop = interrupt_after_parts(tmp_path / "again.npz", 1)
            embed_corpus(embedder, path, tmp_path / "again.npz", on_batch=stop, **options)
        pq.write_table(pa.table({"text": texts[::-1], "id": list(range(60))}), path,
                       row_group_size=7)  # fmt: skip
        with pytest.raises(OutputError, match=r"the input changed .*c\.parquet was"):
            embed_corpus(embedder, path, tmp_path / "again.npz", resume=True, **options)

    def test_jsonl_gz_files_resume_by_file_and_refuse_an_edited_one(self, embedder, tmp_path):
        """A gzip file is one part: a directory of them resumes file by file."""
        rows = [json.dumps({"text": t}) + "\n" for t in real_texts()[:40]]
        for n in range(2):
            (tmp_path / "c" / f"{n}.jsonl.gz").parent.mkdir(exist_ok=True)
            (tmp_path / "c" / f"{n}.jsonl.gz").write_bytes(
                gzip.compress("".join(rows[n * 20 : (n + 1) * 20]).encode())
            )
        with pytest.raises(Interrupted):
            embed_corpus(embedder, tmp_path / "c", tmp_path / "v.npy", window_texts=10,
                         on_batch=interrupt_after_parts(tmp_path / "v.npy", 1))  # fmt: skip
        summary = embed_corpus(embedder, tmp_path / "c", tmp_path / "v.npy", resume=True,
                               window_texts=10)  # fmt: skip
        assert summary.resumed_parts == 1 and summary.stats.docs == 40
        assert np.load(tmp_path / "v.npy").shape == (40, 64)
        with pytest.raises(Interrupted):
            embed_corpus(embedder, tmp_path / "c", tmp_path / "w.npy", window_texts=10,
                         on_batch=interrupt_after_parts(tmp_path / "w.npy", 1))  # fmt: skip
        edited = [json.dumps({"text": "edited"}) + "\n", *rows[1:20]]
        (tmp_path / "c" / "0.jsonl.gz").write_bytes(gzip.compress("".join(edited).encode()))
        with pytest.raises(OutputError, match=r"0\.jsonl\.gz was"):
            embed_corpus(embedder, tmp_path / "c", tmp_path / "w.npy", window_texts=10,
                         resume=True)  # fmt: skip


def test_a_large_parquet_file_streams_in_flat_memory(english_export, tmp_path):
    """8,000 texts of 8 kB (64 MB as Python strings; mostly spaces, so that embedding them is
    quick) cost no more peak memory than 2,000 of them: rows are read a row group at a time
    and leave in windows. (Below about 2,000 rows the allocators are still warming up.)"""
    sentences = sts_sentences()[:240]

    def write(path, rows):
        texts = [sentences[i % 240] + " " * 8_000 + sentences[(i + 1) % 240] for i in range(rows)]
        pq.write_table(pa.table({"text": texts}), path, row_group_size=200)

    write(tmp_path / "small.parquet", 2_000)
    write(tmp_path / "large.parquet", 8_000)
    args = ["--model", english_export, "--provider", "cpu", "--window-texts", "100",
            "--no-progress"]  # fmt: skip
    small = cli_peak_rss_mb("embed", tmp_path / "small.parquet", "-o", tmp_path / "s.npy", *args)
    large = cli_peak_rss_mb("embed", tmp_path / "large.parquet", "-o", tmp_path / "l.npy", *args)
    assert large - small < 16, (small, large)  # the 6,000 more texts are 48 MB
    assert np.load(tmp_path / "l.npy").shape == (8_000, 64)


def test_the_writer_refuses_an_output_that_is_the_input_whatever_its_format(embedder, tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x"]}), path)
    with pytest.raises(OutputError, match="would overwrite the corpus"):
        embed_corpus(embedder, path, path, force=True)
    assert pq.read_table(path).num_rows == 1
