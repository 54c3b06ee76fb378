"""Pooling stage: token vectors -> one vector per text, and optional L2 normalisation.

The graph already returns the manifest's default pooling; these are for the other modes
and for combining the windows of long texts.
"""

from __future__ import annotations

import numpy as np

MODES = ("mean", "cls", "max", "none")


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """(batch, seq, H) + (batch, seq) mask -> (batch, H), padding ignored."""
    if mode == "cls":
        return hidden[:, 0].astype(np.float32)
    weights = mask[:, :, None].astype(np.float32)
    if mode == "mean":
        return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
    if mode == "max":
        return np.where(weights > 0, hidden, -np.inf).max(1).astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r} (one of {', '.join(MODES)})")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
