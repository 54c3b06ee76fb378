"""STS-benchmark pairs and the Spearman correlation used to score sentence embeddings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from albert_onnx.runtime.pipeline.pooling import l2_normalize


def read_pairs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(first sentences, second sentences, gold scores 0..5) of one STS-B csv split."""
    firsts, seconds, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            scores.append(float(row[4]))
            firsts.append(row[5])
            seconds.append(row[6])
    return firsts, seconds, np.asarray(scores)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged, as Spearman's rho needs (gold scores have many ties)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(np.asarray(a)), _ranks(np.asarray(b)))[0, 1])


def cosine_spearman(first: np.ndarray, second: np.ndarray, gold: np.ndarray) -> float:
    """Spearman between the pairs' cosine similarities and the gold scores."""
    return spearman((l2_normalize(first) * l2_normalize(second)).sum(1), gold)
