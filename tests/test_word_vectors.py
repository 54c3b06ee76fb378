"""Static word vectors: the mean of a word's piece rows, projectable to the encoder's space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AlbertModel

from albert_onnx.runtime.word_vectors import WordVectors

from conftest import run_cli


@pytest.fixture(scope="module")
def torch_model(english_checkpoint):
    return AlbertModel.from_pretrained(english_checkpoint).eval()


def test_multi_piece_word_is_the_mean_of_all_its_pieces(english_export, torch_model):
    vectors = WordVectors(english_export)
    pieces = vectors.pieces("unbelievably")
    assert len(pieces) > 1
    table = torch_model.embeddings.word_embeddings.weight.detach().numpy()
    expected = table[[i for _, i in pieces]].mean(axis=0)
    assert np.allclose(vectors.vector("unbelievably"), expected, atol=1e-6)


def test_projection_is_albert_embedding_to_hidden_mapping(english_export, torch_model):
    vectors = WordVectors(english_export)
    e = vectors.vector("layers")
    with torch.no_grad():
        expected = torch_model.encoder.embedding_hidden_mapping_in(torch.from_numpy(e)).numpy()
    projected = vectors.vector("layers", project=True)
    assert projected.shape == (64,)
    assert np.allclose(projected, expected, atol=1e-5)


def test_word_boundary_piece_is_not_averaged_in(english_export):
    vectors = WordVectors(english_export)
    assert all(piece != "\u2581" for piece, _ in vectors.pieces("ALBERT"))


def test_empty_word_is_an_error(english_export):
    with pytest.raises(ValueError, match="no word pieces"):
        WordVectors(english_export).vector("   ")


def test_a_word_that_is_not_utf8_is_one_line(english_export):
    """A shell passes `$(printf 'a\xffb')` as bytes; Python keeps the 0xff as a lone
    surrogate, which the tokenizer cannot take: one line, not a TypeError traceback."""
    result = run_cli("word-vectors", "fine", "a\udcffb", "--model", english_export)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: 'a\\udcffb' is not valid text: a lone surrogate at character 1 (on a command "
        "line: bytes that are not UTF-8)"
    ]
