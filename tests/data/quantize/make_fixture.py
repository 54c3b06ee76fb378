"""Writes st_quantize.npz: vectors and what sentence-transformers' own `quantize_embeddings`
makes of them (int8, uint8 with given ranges; binary, ubinary), for tests/test_precisions.py.

Run once, where sentence-transformers is installed (6.2.0 made the committed file):
    python tests/data/quantize/make_fixture.py
The tests read only the .npz: sentence-transformers is not a dependency.
"""

from pathlib import Path

import numpy as np
from sentence_transformers import __version__
from sentence_transformers.util.quantization import quantize_embeddings

rng = np.random.default_rng(19)
found = {"version": np.array(__version__)}
for dimension in (384, 20):  # a multiple of 8, and one that pads its last byte
    vectors = rng.standard_normal((64, dimension)).astype(np.float32)
    vectors[:3] *= 3  # beyond the ranges below: clipped
    vectors[:, 0] = 0.25  # a constant dimension: a range of width 0
    ranges = np.vstack([vectors[8:].min(axis=0), vectors[8:].max(axis=0)])
    found[f"vectors_{dimension}"] = vectors
    found[f"ranges_{dimension}"] = ranges
    for precision in ("int8", "uint8", "binary", "ubinary"):
        found[f"{precision}_{dimension}"] = quantize_embeddings(vectors, precision, ranges=ranges)
np.savez(Path(__file__).with_name("st_quantize.npz"), **found)
