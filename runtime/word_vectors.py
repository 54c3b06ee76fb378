"""Static word vectors from ALBERT's factorized embedding table, without running the encoder.

A word's vector is the mean of its word pieces' rows (V x E), optionally mapped into the
encoder's H-dimensional space with the exported E -> H projection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from albert_onnx.errors import InputError, ManifestError
from albert_onnx.runtime.model.manifest import verified_file
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.pipeline.tokenizer import METASPACE, lone_surrogate


class WordVectors:
    """Look words up in a model directory's `word_embeddings.npy` (default: the shipped
    model, like everywhere else)."""

    def __init__(self, model: str | Path | None = None) -> None:
        opened = ModelDir.open(model)
        model_dir, manifest = opened.directory, opened.manifest
        record = manifest.word_embeddings
        if not {"file", "sha256", "projection_file", "projection_sha256"} <= set(record):
            raise ManifestError(
                f"{model_dir}: the manifest lists no word embeddings (export writes them; "
                "this directory was made another way)"
            )
        self.table = np.load(
            verified_file(model_dir, record["file"], record["sha256"]), mmap_mode="r"
        )
        projection = np.load(
            verified_file(model_dir, record["projection_file"], record["projection_sha256"])
        )
        self.weight, self.bias = projection["weight"], projection["bias"]
        self.tokenizer = Tokenizer.from_file(str(opened.tokenizer()))

    def pieces(self, word: str) -> list[tuple[str, int]]:
        position = lone_surrogate(word)
        if position is not None:  # from a command line, bytes that are not UTF-8
            raise InputError(
                f"{word!r} is not valid text: a lone surrogate at character {position} "
                "(on a command line: bytes that are not UTF-8)"
            )
        encoding = self.tokenizer.encode(word, add_special_tokens=False)
        return [
            (t, i) for t, i in zip(encoding.tokens, encoding.ids, strict=True) if t != METASPACE
        ]

    def vector(self, word: str, project: bool = False) -> np.ndarray:
        """Mean of WORD's piece vectors (E dims), or its projection (H dims)."""
        ids = [i for _, i in self.pieces(word)]
        if not ids:
            raise InputError(f"{word!r} has no word pieces in this vocabulary")
        vector = np.asarray(self.table[ids], dtype=np.float32).mean(axis=0)
        return vector @ self.weight.T + self.bias if project else vector
