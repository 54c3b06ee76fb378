"""The Lance output: a real Lance dataset (pylance, embedded), written at the commit from the
parts, each record exactly once, resumable like every output; `search` over it, exactly or
through an IVF_PQ index built with --index."""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow.parquet as pq
import pytest

from albert_onnx.errors import OutputError
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.search.search import search_output

from conftest import Interrupted, interrupt_after_parts, real_texts, sts_sentences, write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("lance") / "c.jsonl", real_texts()[:60])


def table_of(output):
    return lance.dataset(str(output)).to_table()


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "ubinary"])
def test_a_lance_output_holds_what_a_parquet_output_holds(embedder, corpus, dtype, tmp_path):
    options = {"id_field": "doc_id", "dtype": dtype, "keep_text": True, "part_bytes": 5000}
    embed_corpus(embedder, corpus, tmp_path / "v.parquet", **options)
    embed_corpus(embedder, corpus, tmp_path / "v.lance", **options)
    found, expected = table_of(tmp_path / "v.lance"), pq.read_table(tmp_path / "v.parquet")
    assert found.schema.names == ["id", "vector", "text"]
    assert found.equals(expected.select(["id", "vector", "text"]))
    manifest = json.loads((tmp_path / "v.lance.manifest.json").read_text())
    assert manifest["rows"] == 60 and manifest["settings"]["dtype"] == dtype
    assert not (tmp_path / "v.lance.parts").exists()


def test_a_lance_output_resumes_and_replaces_what_a_killed_commit_left(embedder, corpus, tmp_path):
    options = {"id_field": "doc_id", "part_bytes": 4000, "window_texts": 8}
    embed_corpus(embedder, corpus, tmp_path / "full.lance", **options)
    cut = tmp_path / "cut.lance"
    with pytest.raises(Interrupted):
        embed_corpus(embedder, corpus, cut, on_batch=interrupt_after_parts(cut, 2), **options)
    (cut / "data").mkdir(parents=True)  # as a commit killed inside Lance's write leaves it
    (cut / "data" / "half-written.lance").write_bytes(b"\0" * 100)
    done = embed_corpus(embedder, corpus, cut, resume=True, **options)
    assert done.resumed_parts == 2 and done.parts > 2
    assert table_of(cut).equals(table_of(tmp_path / "full.lance"))
    assert [v["version"] for v in lance.dataset(str(cut)).versions()] == [1]
    with pytest.raises(OutputError, match="already complete"):
        embed_corpus(embedder, corpus, cut, resume=True, **options)
    again = embed_corpus(embedder, corpus, cut, force=True, **options)
    assert again.stats.docs == 60 and table_of(cut).num_rows == 60


def test_index_only_where_lance_is_written(embedder, corpus, tmp_path):
    with pytest.raises(OutputError, match=r"--index builds a Lance index; name a .lance output"):
        embed_corpus(embedder, corpus, tmp_path / "v.parquet", index=True)


def test_search_through_an_ivf_pq_index_finds_what_the_exact_scan_finds(
    embedder, english_export, tmp_path
):
    texts = list(dict.fromkeys(sts_sentences()))[:3000]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    output = tmp_path / "v.lance"
    embed_corpus(embedder, corpus, output, id_field="doc_id", index=True)
    assert lance.dataset(str(output)).describe_indices()
    queries = real_texts()[:20]
    approximate = search_output(output, queries, k=10, model=english_export, provider="cpu")
    exact = search_output(output, queries, k=10, model=english_export, provider="cpu",
                          exact=True)  # fmt: skip
    recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / 10
                      for a, e in zip(approximate, exact, strict=True)])  # fmt: skip
    # approximate: this random-weight model's vectors crowd together (k-means leaves empty
    # clusters), a hard case for PQ; benchmarks/retrieval.py measures the shipped model's
    assert recall >= 0.75, recall
    exact_scores = {(q, h.id): h.score for q, e in enumerate(exact) for h in e}
    for q, hits in enumerate(approximate):  # refined: each hit's exact inner product
        assert all(abs(h.score - exact_scores.get((q, h.id), h.score)) < 1e-4 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_too_few_rows_for_an_index_is_said_and_searched_exactly(embedder, corpus, tmp_path):
    from albert_onnx.errors import AlbertOnnxWarning

    with pytest.warns(AlbertOnnxWarning, match="60 rows are too few to train an index on"):
        embed_corpus(embedder, corpus, tmp_path / "v.lance", index=True)
    assert not lance.dataset(str(tmp_path / "v.lance")).describe_indices()
