"""Static word vectors from ALBERT's factorized embedding table, without running the encoder.

A word's vector is the mean of its word pieces' rows (V x E), optionally mapped into the
encoder's H-dimensional space with the exported E -> H projection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from albert_onnx.runtime.manifest import load_manifest, verified_file

METASPACE = "\u2581"  # SentencePiece's word-boundary piece carries no meaning of its own


class WordVectors:
    """Look words up in a model directory's `word_embeddings.npy`."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        record = manifest.word_embeddings
        self.table = np.load(
            verified_file(model_dir, record["file"], record["sha256"]), mmap_mode="r"
        )
        projection = np.load(
            verified_file(model_dir, record["projection_file"], record["projection_sha256"])
        )
        self.weight, self.bias = projection["weight"], projection["bias"]
        self.tokenizer = Tokenizer.from_file(
            str(verified_file(model_dir, manifest.tokenizer["file"], manifest.tokenizer["sha256"]))
        )

    def pieces(self, word: str) -> list[tuple[str, int]]:
        encoding = self.tokenizer.encode(word, add_special_tokens=False)
        return [
            (t, i) for t, i in zip(encoding.tokens, encoding.ids, strict=True) if t != METASPACE
        ]

    def vector(self, word: str, project: bool = False) -> np.ndarray:
        """Mean of WORD's piece vectors (E dims), or its projection (H dims)."""
        ids = [i for _, i in self.pieces(word)]
        if not ids:
            raise ValueError(f"{word!r} has no word pieces in this vocabulary")
        vector = np.asarray(self.table[ids], dtype=np.float32).mean(axis=0)
        return vector @ self.weight.T + self.bias if project else vector
