"""What goes in: texts and ids that are refused or kept exactly, bounded work per text,
options checked where the API receives them, and a warning when the model's vocabulary
does not cover a script. The numbers (6, 7, 8, 10, 11) are the trustworthy-runtime audit's
reproductions; the rest is behaviour the audit found untested.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pytest
from test_resume import FORMATS, read_ids

from albert_onnx import Embedder
from albert_onnx.errors import (
    AlbertOnnxError,
    AlbertOnnxWarning,
    CorpusError,
    InputError,
    ManifestError,
    OptionError,
)
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.windows import ahead

from conftest import cli_peak_rss_mb, real_texts, run_cli, sts_sentences, write_jsonl


def write_lines(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- 6. texts that are not text --------------------------------------------------------------


def test_6_a_lone_surrogate_is_a_bad_line_naming_file_line_and_field(embedder, tmp_path):
    corpus = write_lines(tmp_path / "c.jsonl", '{"text": "fine"}', '{"text": "\\ud800"}')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: field 'text' has a lone surrogate"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy")
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", on_error="skip", force=True)
    errors = (tmp_path / "v.npy.errors.jsonl").read_text().splitlines()
    assert summary.stats.docs == 1 and [json.loads(e)["line"] for e in errors] == [2]


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([None], TypeError, r"texts\[0\] is NoneType, not a string"),
        (["ok", 5], TypeError, r"texts\[1\] is int, not a string"),
        (["ok", b"x"], TypeError, r"texts\[1\] is bytes, not a string"),
        (["ok", "bad \ud800"], InputError, r"texts\[1\] has a lone surrogate at character 4"),
    ],
)
def test_6_the_api_refuses_what_is_not_text_naming_its_index(embedder, texts, error, message):
    with pytest.raises(error, match=message):
        embedder.embed(texts)
    with pytest.raises(AlbertOnnxError):  # one base for every refusal
        embedder.embed(texts)


def test_6_the_index_counts_across_windows(embedder):
    texts = ["text"] * 9 + [None]
    with pytest.raises(TypeError, match=r"texts\[9\]"):
        list(embedder.stream(texts, window_texts=4))


# -- 7. ids: one rule, kept exactly in every format ------------------------------------------

ID_SETS = {
    "strings": ["1", "", "ünïcode", 'quote " and \\ backslash', "1.0", "doc-5"],
    "integers": [0, -5, 2**63 - 1, -(2**63), 7, 42],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(ID_SETS))
def test_7_every_format_round_trips_ids_exactly(embedder, tmp_path, kind, fmt):
    ids = ID_SETS[kind]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": i, "text": f"t{n}"}) + "\n" for n, i in enumerate(ids))
    )
    embed_corpus(embedder, corpus, tmp_path / f"v{fmt}", id_field="id")
    back = read_ids(tmp_path / f"v{fmt}")
    assert back == ids and [type(i) for i in back] == [type(i) for i in ids]
    if fmt == ".npz":  # a plain array, never a pickled object array
        assert np.load(tmp_path / f"v{fmt}", allow_pickle=False)["ids"].dtype.kind in "iU"


@pytest.mark.parametrize(
    ("second_id", "reason"),
    [
        ('"1"', "field 'id' is a string, but this corpus's ids are integers"),
        (str(2**76), f"field 'id' is {2**76}, outside the signed 64-bit integer range"),
        ("1.5", "field 'id' is float, not a string or integer"),
        ("true", "field 'id' is bool, not a string or integer"),
    ],
)
def test_7_an_id_that_breaks_the_rule_is_a_bad_line_found_while_reading(
    embedder, tmp_path, second_id, reason
):
    corpus = write_lines(
        tmp_path / "c.jsonl", '{"id": 1, "text": "a"}', f'{{"id": {second_id}, "text": "b"}}'
    )
    calls = []
    with pytest.raises(CorpusError, match=rf"c.jsonl:2: {reason}"):
        embed_corpus(
            embedder,
            corpus,
            tmp_path / "v.parquet",
            id_field="id",
            on_batch=lambda *b: calls.append(b),
        )
    assert calls == [] and not (tmp_path / "v.parquet").exists()  # before any embedding
    embed_corpus(
        embedder, corpus, tmp_path / "v.parquet", id_field="id", on_error="skip", force=True
    )
    assert read_ids(tmp_path / "v.parquet") == [1]


def test_7_duplicate_ids_are_counted(english_export, tmp_path):
    corpus = tmp_path / "c.jsonl"
    ids = ["a", "b", "a", "c", "b", "a"]
    corpus.write_text("".join(json.dumps({"id": i, "text": i}) + "\n" for i in ids))
    result = run_cli(
        "embed", corpus, "-o", tmp_path / "v.npy", "--id-field", "id", "--model", english_export
    )
    assert result.returncode == 0, result.stderr
    assert "duplicate ids 3" in result.stdout


# -- 8. bounded work per text ----------------------------------------------------------------


def test_8_a_50_mb_line_costs_bounded_memory(english_export, tmp_path):
    """It took 62 s and 6 GB to keep 512 tokens of such a line: only a prefix is tokenized."""
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        f.write(json.dumps({"text": "word " * 10_000_000}) + "\n")
        f.write(json.dumps({"text": "a short one"}) + "\n")
    small = write_jsonl(tmp_path / "small.jsonl", ["word", "a short one"])
    args = ["--model", english_export, "--precision", "fp32", "--provider", "cpu", "--no-progress"]
    base = cli_peak_rss_mb("embed", small, "-o", tmp_path / "small.npy", *args)
    peak = cli_peak_rss_mb("embed", corpus, "-o", tmp_path / "v.npy", *args)
    # reading and parsing the line holds it a few times over (bytes, str); tokenizing it
    # whole would add gigabytes
    assert peak - base < 4 * 50, (base, peak)
    expected = Embedder(english_export, provider="cpu", precision="fp32").embed(
        ["word " * 600, "a short one"]
    )
    assert np.abs(np.load(tmp_path / "v.npy") - expected).max() < 1e-5


def test_8_a_chunked_long_text_becomes_windows_of_at_most_max_length(english_export):
    chunking = Embedder(english_export, provider="cpu", precision="fp32", long_texts="chunk")
    long_text = " ".join(real_texts()[::2][:40])
    (windows,) = chunking.pipeline.tokenize([long_text])
    assert len(windows) > 5 and all(len(w) <= 512 for w in windows)
    assert chunking.embed([long_text]).shape == (1, 64)


def test_8_long_texts_chunk_through_the_cli(english_export, tmp_path):
    long_text = " ".join(real_texts()[::2][:12])
    corpus = write_jsonl(tmp_path / "c.jsonl", [long_text, "short"])
    result = run_cli(
        "embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export,
        "--long-texts", "chunk", "--precision", "fp32", "--provider", "cpu", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "truncated 0" in result.stdout
    chunking = Embedder(english_export, provider="cpu", precision="fp32", long_texts="chunk")
    assert np.abs(np.load(tmp_path / "v.npy") - chunking.embed([long_text, "short"])).max() < 1e-5


@pytest.mark.parametrize("value", ["0", "-3"])
def test_8_a_window_of_no_texts_is_refused(english_export, tmp_path, value):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    result = run_cli(
        "embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export,
        "--window-texts", value,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"window_texts must be a whole number of at least 1, not {value}" in result.stderr
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "v.npy.parts").exists()


# -- 10. options are checked where the API receives them ------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_error": "bogus"}, "on_error must be one of raise, skip, not 'bogus'"),
        (
            {"dtype": "int4"},
            "dtype must be one of float32, float16, int8, uint8, binary, ubinary, not 'int4'",
        ),
        ({"window_texts": 0}, "window_texts must be a whole number of at least 1"),
    ],
)
def test_10_embed_corpus_checks_its_options_before_touching_the_output(
    embedder, tmp_path, options, message
):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    (tmp_path / "v.npy").write_text("precious")
    with pytest.raises(OptionError, match=message):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", force=True, **options)
    assert (tmp_path / "v.npy").read_text() == "precious"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_tokens": 0}, "max_batch_tokens must be a whole number of at least 1, not 0"),
        ({"provider": "gpu"}, "provider must be one of auto, cpu, cuda, not 'gpu'"),
        ({"precision": "int4"}, "precision must be one of auto, fp32, int8, fp16, not 'int4'"),
        ({"pooling": "avg"}, "pooling must be one of mean, cls, max, none, not 'avg'"),
        ({"long_texts": "split"}, "long_texts must be one of truncate, chunk, not 'split'"),
        ({"long_texts": "chunk", "pooling": "none"}, "cannot return token vectors"),
    ],
)
def test_10_the_embedder_checks_its_options(english_export, options, message):
    with pytest.raises(OptionError, match=message):
        Embedder(english_export, **options)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-tokens", "0"], "max_batch_tokens must be a whole number of at least 1"),
        (["--on-error", "bogus"], "'bogus' is not one of 'raise', 'skip'"),
        (["--dtype", "int4"], "'int4' is not one of 'float32', 'float16', 'int8', 'uint8'"),
    ],
)
def test_10_the_cli_refuses_the_same_options(english_export, tmp_path, args, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    result = run_cli("embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


# -- 11. a script the vocabulary does not cover ----------------------------------------------


def test_11_texts_of_unknown_tokens_are_counted_and_warned_about(english_export, tmp_path):
    texts = ["😀🎉", "🚀", "这是中文文本", "an English sentence", "emoji inside 😀 is fine"]
    embedder = Embedder(english_export, provider="cpu")
    with pytest.warns(AlbertOnnxWarning, match=r"3 of 5 texts are mostly unknown tokens"):
        vectors = embedder.embed(texts)
    assert np.allclose(vectors[0], vectors[1])  # why it matters: they are all one vector
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    result = run_cli("embed", corpus, "-o", tmp_path / "v.npy", "--model", english_export)
    assert result.returncode == 0, result.stderr
    assert "mostly unknown tokens 3" in result.stdout
    assert "warning: 3 of 5 texts are mostly unknown tokens" in result.stderr


def test_11_covered_text_raises_no_warning(embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.embed(["plain English text", "more of it"])


# -- the API across windows, and its prefetch thread ------------------------------------------


def test_the_api_across_more_than_one_window_keeps_input_order(embedder):
    sentences = sts_sentences()[:4_500]
    together = embedder.embed(sentences)
    apart = np.concatenate([embedder.embed(sentences[:1_000]), embedder.embed(sentences[1_000:])])
    assert together.shape == (4_500, 64)
    assert np.abs(together - apart).max() < 1e-5


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "albert-onnx-prefetch"]


def test_the_prefetch_thread_ends_when_its_consumer_fails():
    def endless():
        n = 0
        while True:
            n += 1
            yield n

    consumer = ahead(endless())
    with pytest.raises(ZeroDivisionError):
        for item in consumer:
            if item == 3:
                raise ZeroDivisionError
    consumer.close()
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


def test_the_prefetch_thread_ends_when_a_stream_is_abandoned(embedder):
    stream = embedder.stream(["text"] * 50, window_texts=5)
    next(stream)
    stream.close()
    assert prefetch_threads() == []


def test_an_error_in_the_producer_reaches_the_consumer():
    def failing():
        yield 1
        raise KeyError("from the worker")

    with pytest.raises(KeyError, match="from the worker"):
        list(ahead(failing()))


# -- encode, as sentence-transformers users call it ------------------------------------------


class TestEncode:
    def test_a_single_string_is_the_first_row_of_embed(self, embedder):
        assert np.array_equal(embedder.encode("one text"), embedder.embed(["one text"])[0])

    def test_token_embeddings(self, embedder):
        tokens = embedder.encode(["short", "a longer text here"], output_value="token_embeddings")
        expected = Embedder(
            embedder.model_dir, provider="cpu", precision="fp32", pooling="none"
        ).embed(["short", "a longer text here"])
        assert [t.shape for t in tokens] == [e.shape for e in expected]
        assert all(np.abs(t - e).max() < 1e-5 for t, e in zip(tokens, expected, strict=True))

    def test_a_list_when_numpy_is_not_wanted(self, embedder):
        rows = embedder.encode(["a", "b"], convert_to_numpy=False)
        assert isinstance(rows, list) and [r.shape for r in rows] == [(64,), (64,)]

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"convert_to_tensor": True}, "torch-free and returns numpy arrays"),
            ({"device": "cuda"}, r"Embedder\(provider='cuda', device_id=N\)"),
            ({"precision": "int4"}, "precision must be one of float32, float16, int8"),
            ({"prompt": "query: "}, "does not support prompt"),
            ({"output_value": None}, "output_value must be one of"),
            ({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
        ],
    )
    def test_what_it_cannot_honour_is_refused_by_name(self, embedder, options, message):
        with pytest.raises(OptionError, match=message):
            embedder.encode(["text"], **options)


# -- word vectors -----------------------------------------------------------------------------


def test_word_vectors_default_to_the_shipped_model(monkeypatch):
    monkeypatch.delenv("ALBERT_ONNX_MODEL", raising=False)
    result = run_cli("word-vectors", "parameters")
    assert result.returncode == 0, result.stderr
    word, pieces, values = result.stdout.strip().split("\t")
    assert (word, pieces, len(values.split())) == ("parameters", "▁parameters", 128)


def test_word_vectors_of_a_model_without_them_is_a_clear_error(english_export, tmp_path):
    import shutil

    from albert_onnx.runtime.word_vectors import WordVectors

    model = shutil.copytree(english_export, tmp_path / "m")
    manifest = json.loads((model / "albert_onnx.json").read_text())
    manifest["word_embeddings"] = {}
    (model / "albert_onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="the manifest lists no word embeddings"):
        WordVectors(model)


def test_embed_takes_any_iterable_of_texts(embedder):
    assert np.array_equal(embedder.embed(iter(["a", "b"])), embedder.embed(["a", "b"]))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON this reader will not parse"),
        ('{"text": "x", "n": ' + "9" * 5_000 + "}", "JSON this reader will not parse"),
    ],
)
def test_6_json_the_parser_refuses_is_a_bad_line_too(embedder, tmp_path, line, reason):
    corpus = write_lines(tmp_path / "c.jsonl", '{"text": "fine"}', line)
    with pytest.raises(CorpusError, match=rf"c.jsonl:2: {reason}"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy")
    summary = embed_corpus(embedder, corpus, tmp_path / "v.npy", on_error="skip", force=True)
    assert summary.stats.docs == 1 and summary.stats.skipped == 1


@pytest.mark.parametrize(
    ("identifier", "reason"),
    [
        ("a\x00", "field 'id' contains a NUL character"),
        ("x" * 1025, "field 'id' is 1,025 characters long \\(at most 1,024\\)"),
    ],
)
def test_7_ids_no_format_could_keep_exactly_are_bad_lines(embedder, tmp_path, identifier, reason):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": identifier, "text": "t"}) + "\n")
    with pytest.raises(CorpusError, match=rf"c.jsonl:1: {reason}"):
        embed_corpus(embedder, corpus, tmp_path / "v.npz", id_field="id")


@pytest.mark.parametrize(("text_field", "id_field"), [("", None), (None, None), ("text", 5)])
def test_10_field_names_are_checked(embedder, tmp_path, text_field, id_field):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
    with pytest.raises(OptionError, match="must be a field name"):
        embed_corpus(embedder, corpus, tmp_path / "v.npy", text_field=text_field, id_field=id_field)


def test_a_token_vector_embedder_refuses_to_pool(english_export):
    tokens = Embedder(english_export, provider="cpu", pooling="none")
    with pytest.raises(OptionError, match="gives token vectors"):
        tokens.pipeline.pooled(tokens.pipeline.tokenize(["text"]))
