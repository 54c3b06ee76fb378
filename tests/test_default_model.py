"""The model shipped in models/ is installed with the package, used when no model is named,
and means something: it ranks similar sentences above unrelated ones and keeps its STS-B
score through INT8. (Its training and the full evaluation are in models/training.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from albert_onnx import Embedder
from albert_onnx.runtime.model import model_dir

from conftest import DATA, run_cli, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "training"))
from sts import cosine_spearman, read_pairs

# STS-B test Spearman measured at release (models/training/sts_eval.json) minus a margin
# for onnxruntime versions and CPUs: a drop below this is a broken model, not noise.
MIN_INT8_SPEARMAN = 0.75  # measured 0.7654


@pytest.fixture
def no_model_override(monkeypatch):
    monkeypatch.delenv(model_dir.ENV_MODEL, raising=False)


@pytest.fixture(scope="module")
def sts_test():
    return read_pairs(DATA / "corpora" / "sts-test.csv")


def test_embedder_without_a_model_uses_the_shipped_one_on_int8(no_model_override):
    embedder = Embedder(provider="cpu")
    assert embedder.model_dir == model_dir.default_model_dir()
    assert embedder.precision == "int8" and embedder.dimension == 384
    vectors = embedder.embed(["A first sentence.", "A second one."])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalized model


def test_paraphrases_score_above_unrelated_sentences(no_model_override):
    embedder = Embedder(provider="cpu")
    anchor, paraphrase, unrelated = embedder.embed(
        [
            "A man is playing a guitar on stage.",
            "Someone performs a song on the guitar in a concert.",
            "The stock market fell sharply after the announcement.",
        ]
    )
    assert anchor @ paraphrase > anchor @ unrelated + 0.2


def test_sts_b_test_spearman_holds_through_int8(no_model_override, sts_test):
    firsts, seconds, gold = sts_test
    scores = {}
    for precision in ("fp32", "int8"):
        embedder = Embedder(provider="cpu", precision=precision)
        scores[precision] = cosine_spearman(embedder.embed(firsts), embedder.embed(seconds), gold)
    assert scores["int8"] >= MIN_INT8_SPEARMAN
    assert abs(scores["int8"] - scores["fp32"]) <= 0.01


def test_embed_command_needs_no_model_option(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["one text", "another text", "a third"])
    result = run_cli(
        "embed", corpus, "--output", tmp_path / "v.npy", "--id-field", "doc_id", "--provider", "cpu"
    )
    assert result.returncode == 0, result.stderr
    assert "albert-minilm-small: int8 on cpu" in result.stderr
    assert np.load(tmp_path / "v.npy").shape == (3, 384)
