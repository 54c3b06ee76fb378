"""The exported tokenizer.json gives the ids transformers' own tokenizers give."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from transformers import AlbertTokenizer, BertTokenizer

from albert_onnx.export.exporter import export_model
from albert_onnx.runtime.model.manifest import load_manifest
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

from conftest import DATA, build_checkpoint, sts_sentences


def runtime_tokenizer(model_dir) -> TextTokenizer:
    return TextTokenizer(model_dir / "tokenizer.json", load_manifest(model_dir).max_length)


def ids(tokenizer: TextTokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids.tolist() for e in tokenizer.encode(texts)]


@pytest.fixture(scope="module")
def sts() -> list[str]:
    sentences = sts_sentences()
    assert len(sentences) == 2 * (5749 + 1500 + 1379)
    return sentences


def test_known_albert_ids(english_export):
    tokenizer = runtime_tokenizer(english_export)
    assert ids(tokenizer, ["Hello world! ALBERT shares parameters across layers."]) == [
        [2, 10975, 126, 187, 2953, 5945, 12905, 464, 9124, 9, 3]
    ]


def test_albert_ids_equal_transformers_on_all_sts_sentences(
    english_export, english_checkpoint, sts
):
    reference = AlbertTokenizer.from_pretrained(english_checkpoint)
    stripped = [s.strip() for s in sts]
    expected = reference(stripped, truncation=True, max_length=512)["input_ids"]
    ours = runtime_tokenizer(english_export)
    assert ids(ours, stripped) == expected
    # ALBERT strips surrounding whitespace itself; the fast tokenizer alone would not.
    assert ids(ours, sts) == expected


def test_spiece_only_conversion_equals_the_reference_tokenizer(tmp_path, english_export, sts):
    checkpoint = build_checkpoint(tmp_path / "sp", tokenizer_files=("spiece.model",))
    export_model(str(checkpoint), tmp_path / "out")
    stripped = [s.strip() for s in sts]
    converted = ids(runtime_tokenizer(tmp_path / "out"), stripped)
    assert converted == ids(runtime_tokenizer(english_export), stripped)
    assert ids(runtime_tokenizer(tmp_path / "out"), ["key-board"]) == [[2, 1246, 8, 2806, 3]]


def test_chinese_wordpiece_ids_equal_transformers(tmp_path):
    checkpoint = build_checkpoint(tmp_path / "zh", vocab="chinese")
    export_model(str(checkpoint), tmp_path / "out")
    sentences = (
        (DATA / "corpora" / "zh_gsdsimp_test_200.txt").read_text(encoding="utf-8").split("\n")
    )
    sentences = [s for s in sentences if s] + ["ALBERT在各层之间共享参数，模型更小。"]
    reference = BertTokenizer.from_pretrained(DATA / "albert-chinese")
    ours = runtime_tokenizer(tmp_path / "out")
    assert ids(ours, sentences) == reference(sentences)["input_ids"]
    assert ids(ours, sentences[-1:]) == [
        [
            101,
            9266,
            10491,
            1762,
            1392,
            2231,
            722,
            7313,
            1066,
            775,
            1346,
            3144,
            8024,
            3563,
            1798,
            3291,
            2207,
            511,
            102,
        ]
    ]


def test_truncation_is_reported(english_export):
    encoded = runtime_tokenizer(english_export).encode(["word " * 600, "short"])
    assert [len(e) for e in encoded] == [512, 3]
    assert [e.truncated for e in encoded] == [True, False]


def long_texts() -> list[str]:
    wiki = (DATA / "corpora" / "wikitext2_test_head300.txt").read_text(encoding="utf-8")
    return [wiki[start : start + length] for start in range(0, 40_000, 1_999)
            for length in (50, 3_000, 9_000, 30_000)]  # fmt: skip


@pytest.fixture(scope="module")
def chinese_export(tmp_path_factory):
    output = tmp_path_factory.mktemp("zh") / "out"
    export_model(str(build_checkpoint(output.parent / "ckpt", vocab="chinese")), output)
    return output


def chinese_long_texts() -> list[str]:
    text = (DATA / "corpora" / "zh_gsdsimp_test_200.txt").read_text(encoding="utf-8")
    return [text[start : start + length] for start in range(0, 6_000, 997)
            for length in (30, 1_000, 9_000)]  # fmt: skip


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_a_bounded_prefix_gives_the_tokens_of_the_whole_text(
    language, english_export, chinese_export
):
    """Truncation needs only a prefix: the kept tokens equal those of the whole text."""
    model, texts = (
        (english_export, long_texts())
        if language == "english"
        else (chinese_export, chinese_long_texts())
    )
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    reference.enable_truncation(512)
    ours = runtime_tokenizer(model).encode(texts)
    expected = reference.encode_batch(texts)
    assert [list(e.ids) for e in ours] == [e.ids for e in expected]
    assert [e.truncated for e in ours] == [bool(e.overflowing) for e in expected]
    assert sum(e.truncated for e in ours) > len(texts) // 2


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_chunk_windows_are_tokenizers_own_overlapping_windows(
    language, english_export, chinese_export
):
    """Chunked texts are tokenized one bounded segment at a time, then cut into windows
    of 512 with 64 shared: the same windows tokenizers' stride gives for the whole text."""
    model, texts = (
        (english_export, long_texts())
        if language == "english"
        else (chinese_export, chinese_long_texts())
    )
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    reference.enable_truncation(512, stride=64)
    ours = TextTokenizer(model / "tokenizer.json", 512, overlap=64).encode_windows(texts)
    for windows, encoding in zip(ours, reference.encode_batch(texts), strict=True):
        assert [list(w.ids) for w in windows] == [e.ids for e in (encoding, *encoding.overflowing)]


def test_texts_mostly_of_unknown_tokens_are_flagged(english_export):
    encoded = runtime_tokenizer(english_export).encode(
        ["😀🎉", "🚀", "中文文本", "hello 😀", "", "plain English"]
    )
    assert [e.mostly_unknown for e in encoded] == [True, True, True, False, False, False]
