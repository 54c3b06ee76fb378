"""Exact top-k search over an output of any format and dtype, a chunk at a time (memory: one
chunk, and the best hits of each query so far).

- float32, float16: the inner product of the query's float vector and each vector (BLAS).
- int8, uint8: the inner product of the integer codes, the query quantized with the output's
  own ranges (summed in float64: exact for these magnitudes, and BLAS).
- binary, ubinary: the bits that agree (the dimension minus the Hamming distance); with
  RESCORE, the best RESCORE by bits are ranked again by the inner product of the query's
  float vector and their bits (0 or 1 each), as sentence-transformers rescores.

Ties go to the earlier row, so the hits are those of a stable sort of every score. An
indexed Lance output of floats is searched through its index instead (approximate: the
index's candidates ranked by their exact inner products), unless EXACT.
The queries are embedded as the output's vectors were: the model is checked against the
fingerprint the output records, and its pooling, normalisation and chunking are the output's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_onnx.errors import OptionError, OutputError
from albert_onnx.runtime.io.records import Record
from albert_onnx.runtime.jobs.part import iter_items
from albert_onnx.runtime.jobs.plan import make_plan
from albert_onnx.runtime.options import JobOptions, ModelOptions, Provider, check_positive
from albert_onnx.runtime.pipeline.pipeline import Pipeline
from albert_onnx.runtime.pipeline.quantize import CALIBRATED, PACKED, quantize, unpack
from albert_onnx.runtime.search.stored import Stored, open_stored

SAME_VECTORS = ("graph_sha256", "tokenizer_sha256", "dimension", "pooling", "normalize",
                "chunked")  # fmt: skip


@dataclass(frozen=True)
class Hit:
    query: int
    rank: int
    id: str | int
    score: float


def query_pipeline(stored: Stored, model: str | Path | None, provider: Provider) -> Pipeline:
    """The pipeline that embeds queries as STORED's vectors were embedded, or an error
    naming what differs."""
    settings = stored.settings
    options = ModelOptions(model, provider, settings["precision"], settings["pooling"],
                           settings["normalize"],
                           long_texts="chunk" if settings["chunked"] else "truncate")  # fmt: skip
    pipeline = Pipeline(options)
    found = pipeline.settings()
    differ = [key for key in SAME_VECTORS if found.get(key) != settings.get(key)]
    if differ:
        raise OutputError(
            f"{stored.location} was embedded by another model than {pipeline.model_dir} "
            f"({', '.join(differ)} differ): pass --model with the directory that embedded it"
        )
    return pipeline


def search(stored: Stored, queries: np.ndarray, k: int = 10, rescore: int | None = None,
           exact: bool = False) -> list[list[Hit]]:  # fmt: skip
    """The K best rows of STORED for each of QUERIES (float32, (q, dimension))."""
    check_positive("k", k)
    dtype = stored.dtype
    if rescore is not None:
        check_positive("rescore", rescore)
        if dtype not in PACKED:
            raise OptionError(f"rescore re-ranks binary and ubinary outputs; this one is {dtype}")
    queries = np.asarray(queries, dtype=np.float32)
    if stored.nearest is not None and not exact:
        return _hits([stored.nearest(query, k) for query in queries])
    if dtype in PACKED:
        coded = quantize(queries, dtype).view(np.uint8)
    elif dtype in CALIBRATED:
        coded = quantize(queries, dtype, stored.ranges).astype(np.float64)
    else:
        coded = queries
    best = _Best(len(queries), max(k, rescore or 0), keep_rows=rescore is not None)
    first = 0
    for ids, vectors in stored.chunks():
        best.add(_scores(vectors, coded, dtype, stored.dimension), first, ids, vectors)
        first += len(ids)
    if rescore is not None:
        best.rescore(queries, dtype, stored.dimension)
    return _hits([best.of(q, k) for q in range(len(queries))])


def _hits(found: list[tuple[list, np.ndarray]]) -> list[list[Hit]]:
    """Each query's (ids, scores), best first, as hits."""
    return [[Hit(q, rank, found_id, float(score))
             for rank, (found_id, score) in enumerate(zip(*hits, strict=True), 1)]
            for q, hits in enumerate(found)]  # fmt: skip


def _scores(vectors: np.ndarray, coded: np.ndarray, dtype: str, dimension: int) -> np.ndarray:
    """(rows, queries) scores of a chunk."""
    if dtype in PACKED:
        bits = vectors.view(np.uint8)  # binary's -128 flips every byte's high bit alike
        return np.stack([dimension - np.bitwise_count(bits ^ q).sum(axis=1, dtype=np.int64)
                         for q in coded], axis=1)  # fmt: skip
    if dtype in CALIBRATED:
        return vectors.astype(np.float64) @ coded.T
    return vectors.astype(np.float32, copy=False) @ coded.T


class _Best:
    """Each query's best N (score, row, id) so far, ties to the earlier row; and with
    KEEP_ROWS, their stored vectors (for rescoring)."""

    def __init__(self, queries: int, n: int, keep_rows: bool) -> None:
        self.n, self.keep_rows = n, keep_rows
        self.scores = [np.empty(0)] * queries
        self.rows = [np.empty(0, np.int64)] * queries
        self.ids: list[list] = [[] for _ in range(queries)]
        self.kept: list[np.ndarray | None] = [None] * queries

    def add(self, scores: np.ndarray, first: int, ids: list, vectors: np.ndarray) -> None:
        for q in range(scores.shape[1]):
            column = scores[:, q]
            chosen = np.arange(len(column))
            if len(column) > self.n:  # the N best, and every row tied with the last of them
                edge = column[np.argpartition(-column, self.n - 1)[: self.n]].min()
                chosen = np.flatnonzero(column >= edge)
            self._merge(q, column[chosen], first + chosen, [ids[i] for i in chosen],
                        vectors[chosen] if self.keep_rows else None)  # fmt: skip

    def _merge(self, q: int, scores: np.ndarray, rows: np.ndarray, ids: list,
               kept: np.ndarray | None) -> None:  # fmt: skip
        scores = np.concatenate([self.scores[q], scores.astype(np.float64)])
        rows = np.concatenate([self.rows[q], rows])
        ids = self.ids[q] + ids
        order = np.lexsort((rows, -scores))[: self.n]
        self.scores[q], self.rows[q] = scores[order], rows[order]
        self.ids[q] = [ids[i] for i in order]
        if kept is not None:
            both = kept if self.kept[q] is None else np.concatenate([self.kept[q], kept])
            self.kept[q] = both[order]

    def rescore(self, queries: np.ndarray, dtype: str, dimension: int) -> None:
        """Each query's kept rows ranked again by its float vector against their bits."""
        for q, kept in enumerate(self.kept):
            if kept is not None and len(kept):
                scores = unpack(kept, dtype, dimension).astype(np.float32) @ queries[q]
                order = np.lexsort((self.rows[q], -scores))
                self.scores[q], self.rows[q] = scores[order].astype(np.float64), self.rows[q][order]
                self.ids[q] = [self.ids[q][i] for i in order]

    def of(self, q: int, k: int) -> tuple[list, np.ndarray]:
        return self.ids[q][:k], self.scores[q][:k]


def read_queries(path: str, text_field: str = "text") -> list[str]:
    """The queries in PATH, read as a corpus is (`--queries`): one per line of a text file,
    or the TEXT_FIELD of each record of JSONL, CSV or Parquet; a bad line stops, named."""
    options = JobOptions(text_field=text_field)
    return [item.text for _, item in iter_items(make_plan([path], options), options)
            if isinstance(item, Record)]  # fmt: skip


def search_output(
    output: str | Path,
    queries: list[str],
    k: int = 10,
    *,
    rescore: int | None = None,
    model: str | Path | None = None,
    provider: Provider = "auto",
    exact: bool = False,
) -> list[list[Hit]]:
    """QUERIES embedded as OUTPUT's vectors were (MODEL must be the model that made them),
    then each one's K best rows of OUTPUT (see the module docstring)."""
    if not queries:
        raise OptionError("no queries to search for")
    stored = open_stored(str(output))
    pipeline = query_pipeline(stored, model, provider)
    vectors, _ = pipeline.embed_docs(pipeline.tokenize(list(queries)))
    return search(stored, vectors, k, rescore, exact)
