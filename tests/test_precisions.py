"""Output precisions: float32, float16, int8, uint8 (calibrated ranges), binary and ubinary
(packed bits), the same through the API, every output format, resume and the CLI; the
bits and steps are sentence-transformers' own (`data/quantize/st_quantize.npz`, made by
its `quantize_embeddings`; see make_fixture.py there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from albert_onnx.errors import OptionError
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.quantize import Ranges, quantize, storage, unpack

from conftest import Interrupted, interrupt_after_parts, real_texts, run_cli, write_jsonl

ST = np.load(Path(__file__).parent / "data" / "quantize" / "st_quantize.npz")
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
FORMATS = (".npy", ".npz", ".parquet", ".jsonl", ".lance", "")  # "": a directory of parts


# -- the values are sentence-transformers' ---------------------------------------------------


@pytest.mark.parametrize("dimension", [384, 20])
@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_values_equal_sentence_transformers(precision, dimension):
    """Clipped values beyond the ranges and a constant dimension included; 20 dimensions
    pad the last byte."""
    vectors, ranges = ST[f"vectors_{dimension}"], ST[f"ranges_{dimension}"]
    found = quantize(vectors, precision, Ranges.of(ranges, dimension))
    expected = ST[f"{precision}_{dimension}"]
    assert found.dtype == expected.dtype and found.shape == expected.shape
    assert np.array_equal(found, expected)
    assert found.shape[1] == storage(precision, dimension)[1]


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_bits_unpack_to_the_signs(precision):
    vectors = ST["vectors_20"]
    bits = unpack(quantize(vectors, precision), precision, 20)
    assert bits.shape == (len(vectors), 20) and np.array_equal(bits, vectors > 0)


def test_ranges_keep_their_float32_values_through_json():
    ranges = Ranges.calibrate(ST["vectors_384"], "a sample")
    again = Ranges.from_dict(json.loads(json.dumps(ranges.to_dict())))
    assert np.array_equal(again.low, ranges.low) and np.array_equal(again.high, ranges.high)
    assert again.source == "a sample"


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return real_texts()[:40]


@pytest.fixture(scope="module")
def floats(embedder, texts) -> np.ndarray:
    return embedder.embed(texts)


def test_embed_and_encode_return_each_precision(embedder, texts, floats):
    ranges = np.vstack([floats.min(axis=0), floats.max(axis=0)])
    for precision in PRECISIONS:
        given = ranges if precision in ("int8", "uint8") else None
        calibrated = Ranges.of(given, embedder.dimension) if given is not None else None
        expected = quantize(floats, precision, calibrated)
        found = embedder.embed(texts, precision=precision, ranges=given)
        assert found.dtype == expected.dtype and np.array_equal(found, expected), precision
        single = embedder.encode(texts[0], precision=precision, ranges=given)
        alone = embedder.embed(texts[:1], precision=precision, ranges=given)[0]
        assert single.shape == expected[0].shape and np.array_equal(single, alone), precision
    assert embedder.embed(texts, precision="binary").shape == (40, embedder.dimension // 8)


def test_what_a_precision_needs_is_checked_before_any_work(embedder, texts):
    with pytest.raises(OptionError, match=r"int8 vectors need each dimension.s range, and this"):
        embedder.embed(texts, precision="int8")
    with pytest.raises(OptionError, match="ranges quantize int8 and uint8 vectors, not binary"):
        embedder.embed(texts, precision="binary", ranges=np.zeros((2, embedder.dimension)))
    with pytest.raises(OptionError, match=f"has 3 dimensions and the model {embedder.dimension}"):
        embedder.embed(texts, precision="uint8", ranges=np.zeros((2, 3)))
    with pytest.raises(OptionError, match="precision must be one of float32, float16, int8"):
        embedder.encode(texts, precision="int4")
    with pytest.raises(OptionError, match="token embeddings are returned as float32"):
        embedder.encode(texts, output_value="token_embeddings", precision="binary")


# -- the corpus job: every format, ranges recorded, resume -----------------------------------


def lance_table(output: Path):
    import lance

    return lance.dataset(str(output)).to_table()


def read_output(output: Path) -> tuple[list, np.ndarray, dict]:
    """ids, vectors as stored, and the manifest, for every output format."""
    if output.suffix == "":
        manifest = json.loads((output / "_manifest.json").read_text())
        table = pq.read_table(sorted(output.glob("part-*.parquet")))
        return table["id"].to_pylist(), np.stack(table["vector"].to_numpy(False)), manifest
    manifest = json.loads(output.with_name(output.name + ".manifest.json").read_text())
    if output.suffix == ".npy":
        ids = [json.loads(line) for line in output.with_name(output.name + ".ids.jsonl").open()]
        return ids, np.load(output), manifest
    if output.suffix == ".npz":
        saved = np.load(output)
        return saved["ids"].tolist(), saved["embeddings"], manifest
    if output.suffix in (".parquet", ".lance"):
        table = pq.read_table(output) if output.suffix == ".parquet" else lance_table(output)
        return table["id"].to_pylist(), np.stack(table["vector"].to_numpy(False)), manifest
    rows = [json.loads(line) for line in output.open()]
    return [r["id"] for r in rows], np.array([r["vector"] for r in rows]), manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("precisions") / "c.jsonl", texts)


@pytest.fixture(scope="module")
def job_floats(embedder, corpus, tmp_path_factory) -> np.ndarray:
    """The job's float32 vectors: windows batch alike whatever the dtype, so the other
    dtypes must be exactly these, quantized."""
    output = tmp_path_factory.mktemp("floats") / "v.npy"
    embed_corpus(embedder, corpus, output, window_texts=16)
    return np.load(output)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_job_writes_each_precision_in_every_format(
    embedder, corpus, job_floats, texts, precision, fmt, tmp_path
):
    output = tmp_path / f"v{fmt}"
    embed_corpus(embedder, corpus, output, id_field="doc_id", dtype=precision,
                 calibration_texts=25, window_texts=16)  # fmt: skip
    ids, stored, manifest = read_output(output)
    assert ids == [f"doc{i}" for i in range(40)]
    assert manifest["settings"]["dtype"] == precision
    ranges = None
    if precision in ("int8", "uint8"):  # calibrated on the corpus's first 25 records
        ranges = Ranges.from_dict(manifest["ranges"])
        assert ranges.source == "the first 25 records of the corpus"
        sample = embedder.embed(texts[:25])
        assert np.array_equal(ranges.array, np.vstack([sample.min(0), sample.max(0)]))
    else:
        assert manifest["ranges"] is None
    expected = quantize(job_floats, precision, ranges)
    if fmt != ".jsonl":
        assert stored.dtype == expected.dtype
    assert np.array_equal(stored.astype(expected.dtype), expected)


def test_int8_ranges_from_a_calibration_file(embedder, corpus, tmp_path):
    sample = write_jsonl(tmp_path / "sample.jsonl", real_texts()[100:130])
    output = tmp_path / "v.npy"
    embed_corpus(embedder, corpus, output, dtype="uint8", calibration=sample)
    _, _, manifest = read_output(output)
    ranges = Ranges.from_dict(manifest["ranges"])
    sampled = embedder.embed(real_texts()[100:130])
    assert ranges.source == f"the first 30 records of {sample}"
    assert np.array_equal(ranges.array, np.vstack([sampled.min(0), sampled.max(0)]))


def test_a_resumed_int8_run_keeps_the_interrupted_runs_ranges(embedder, corpus, tmp_path):
    """The ranges are measured once, before anything is written; a resumed run reads them
    from the state, whatever the calibration sample would give now."""
    full, cut = tmp_path / "full.parquet", tmp_path / "cut.parquet"
    options = {"id_field": "doc_id", "dtype": "int8", "part_bytes": 3000, "window_texts": 8}
    embed_corpus(embedder, corpus, full, **options)
    with pytest.raises(Interrupted):
        embed_corpus(embedder, corpus, cut, on_batch=interrupt_after_parts(cut, 2), **options)
    state = json.loads((tmp_path / "cut.parquet.parts" / "_state.json").read_text())
    assert state["ranges"]["source"] == "the first 40 records of the corpus"
    done = embed_corpus(embedder, corpus, cut, resume=True, **options)
    assert done.resumed_parts == 2 and done.parts > 2
    assert cut.read_bytes() == full.read_bytes()
    assert read_output(cut)[2]["ranges"] == state["ranges"]


def test_options_that_do_not_fit_are_refused(embedder, corpus, tmp_path, english_export):
    with pytest.raises(OptionError, match="a calibration file sets int8 and uint8 ranges; dtype"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", dtype="binary", calibration=corpus)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(OptionError, match=r"empty.jsonl has no records to calibrate int8"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", dtype="int8", calibration=empty)
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "v.npy.parts").exists()
    refused = run_cli("embed", "-", "-o", tmp_path / "s.npy", "--dtype", "int8",
                      "--model", english_export)  # fmt: skip
    assert refused.returncode == 1
    assert "standard input cannot be read twice: pass --calibration FILE" in refused.stderr


def test_the_cli_writes_packed_bits(english_export, embedder, corpus, floats, tmp_path):
    output = tmp_path / "bits.npy"
    done = run_cli("embed", corpus, "-o", output, "--dtype", "ubinary", "--precision", "fp32",
                   "--provider", "cpu", "--model", english_export)  # fmt: skip
    assert done.returncode == 0, done.stderr
    bits = np.load(output)
    assert bits.dtype == np.uint8 and bits.shape == (40, embedder.dimension // 8)
    assert np.array_equal(unpack(bits, "ubinary", embedder.dimension), floats > 0)


# -- texts beside their vectors (--keep-text) ------------------------------------------------


@pytest.mark.parametrize("fmt", [".parquet", ".jsonl", ""])
def test_keep_text_writes_each_text_beside_its_vector(embedder, corpus, texts, fmt, tmp_path):
    output = tmp_path / f"v{fmt}"
    embed_corpus(embedder, corpus, output, id_field="doc_id", dtype="binary", keep_text=True,
                 window_texts=16, part_bytes=5000)  # fmt: skip
    if fmt == ".jsonl":
        rows = [json.loads(line) for line in output.open()]
        found = [(r["id"], r["text"]) for r in rows]
    else:
        paths = [output] if fmt else sorted(output.glob("part-*.parquet"))
        table = pq.read_table(paths)
        found = list(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))
    assert found == [(f"doc{i}", text) for i, text in enumerate(texts)]


def test_keep_text_is_refused_where_a_format_has_no_place_for_it(embedder, corpus, tmp_path):
    from albert_onnx.errors import OutputError

    for fmt in (".npy", ".npz"):
        with pytest.raises(OutputError, match=rf"v{fmt}: --keep-text writes the texts beside "):
            embed_corpus(embedder, corpus, tmp_path / f"v{fmt}", keep_text=True)


@pytest.mark.parametrize(
    ("fmt", "precision"),
    [(".npy", "int8"), (".npz", "uint8"), (".parquet", "binary"), (".jsonl", "float16"),
     (".lance", "ubinary"), ("", "float32")],
)  # fmt: skip
def test_the_cli_writes_every_format_as_the_api_does(
    english_export, embedder, corpus, fmt, precision, tmp_path
):
    by_cli, by_api = tmp_path / f"cli{fmt}", tmp_path / f"api{fmt}"
    done = run_cli("embed", corpus, "-o", by_cli, "--dtype", precision, "--id-field", "doc_id",
                   "--precision", "fp32", "--provider", "cpu",
                   "--model", english_export)  # fmt: skip
    assert done.returncode == 0, done.stderr
    embed_corpus(embedder, corpus, by_api, id_field="doc_id", dtype=precision)
    ids, stored, manifest = read_output(by_cli)
    api_ids, expected, api_manifest = read_output(by_api)
    assert ids == api_ids and manifest["settings"]["dtype"] == precision
    if precision in ("int8", "uint8"):  # measured in two processes: the same sample
        found, ranges = (
            Ranges.from_dict(manifest["ranges"]),
            Ranges.from_dict(api_manifest["ranges"]),
        )
        assert found.source == ranges.source
        assert np.allclose(found.array, ranges.array, atol=1e-5)
    else:
        assert manifest["ranges"] is None
    stored = stored.astype(expected.dtype)
    if precision in ("binary", "ubinary"):  # bits: a value at 0 may round to either side
        same = unpack(stored, precision, embedder.dimension) == unpack(
            expected, precision, embedder.dimension
        )
        assert same.mean() > 0.999
    elif precision in ("int8", "uint8"):  # a step's edge likewise
        assert np.abs(stored.astype(int) - expected.astype(int)).max() <= 1
    else:
        assert np.allclose(stored.astype(np.float32), expected.astype(np.float32), atol=2e-3)
