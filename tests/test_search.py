"""`search` over an output: every format and dtype gives what a brute-force numpy top-k over
the same stored values gives (ties to the earlier row), across chunks and parts; binary
outputs rescored by the float query; queries embedded only by the model that made the
output; an output larger than its chunks searched in bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from albert_onnx.errors import OutputError
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.quantize import Ranges, quantize, unpack
from albert_onnx.runtime.search import stored as stored_module
from albert_onnx.runtime.search.search import search_output
from albert_onnx.runtime.search.stored import open_stored

from conftest import cli_peak_rss_mb, real_texts, run_cli, sts_sentences, write_jsonl

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
FORMATS = (".npy", ".npz", ".parquet", ".jsonl", ".lance", "")  # "": a directory of parts
QUERIES = sts_sentences()[:6]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("search") / "c.jsonl", real_texts()[:60])


def stored_values(output: Path) -> tuple[list, np.ndarray]:
    """Every id and stored vector, read whole (what the brute force searches)."""
    ids, chunks = [], []
    for chunk_ids, vectors in open_stored(str(output)).chunks():
        ids += chunk_ids
        chunks.append(vectors)
    return ids, np.concatenate(chunks)


def brute_force(output: Path, queries: np.ndarray, k: int, rescore: int | None = None):
    """The K best (id, score) per query by numpy over every stored value at once."""
    stored = open_stored(str(output))
    ids, values = stored_values(output)
    dtype, dimension = stored.dtype, stored.dimension
    if dtype in ("binary", "ubinary"):
        bits = unpack(values, dtype, dimension).astype(np.int64)
        query_bits = unpack(quantize(queries, dtype), dtype, dimension).astype(np.int64)
        scores = (bits[:, None, :] == query_bits[None, :, :]).sum(-1)
    elif dtype in ("int8", "uint8"):
        scores = values.astype(np.int64) @ quantize(queries, dtype, stored.ranges).T.astype(
            np.int64
        )
    else:
        scores = values.astype(np.float32) @ queries.T
    found = []
    for q in range(len(queries)):
        order = np.argsort(-scores[:, q], kind="stable")
        if rescore:  # the best RESCORE by bits, ranked again by the float query
            top = order[:rescore]
            again = unpack(values[top], dtype, dimension).astype(np.float32) @ queries[q]
            ranked = np.lexsort((top, -again))[:k]  # ties to the earlier row
            found.append([(ids[top[j]], float(again[j])) for j in ranked])
            continue
        found.append([(ids[i], float(scores[i, q])) for i in order[:k]])
    return found


def hits(found) -> list[list[tuple]]:
    return [[(hit.id, hit.score) for hit in query] for query in found]


def same(found, expected) -> bool:
    return all(
        [i for i, _ in a] == [i for i, _ in b]
        and np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-4)
        for a, b in zip(found, expected, strict=True)
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_search_equals_brute_force_in_every_format_and_dtype(
    embedder, english_export, corpus, precision, fmt, tmp_path, monkeypatch
):
    output = tmp_path / f"v{fmt}"
    embed_corpus(embedder, corpus, output, id_field="doc_id", dtype=precision, window_texts=8,
                 part_bytes=6000)  # fmt: skip
    monkeypatch.setattr(stored_module, "CHUNK_ROWS", 7)  # single files: chunks across rows
    queries = embedder.embed(QUERIES)
    found = search_output(output, QUERIES, k=5, model=english_export, provider="cpu")
    assert [[h.rank for h in query] for query in found] == [[1, 2, 3, 4, 5]] * len(QUERIES)
    assert same(hits(found), brute_force(output, queries, 5))


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_outputs_rescored_by_the_float_query(
    embedder, english_export, corpus, precision, tmp_path
):
    output = tmp_path / "bits.npy"
    embed_corpus(embedder, corpus, output, dtype=precision)
    queries = embedder.embed(QUERIES)
    found = search_output(output, QUERIES, k=4, rescore=20, model=english_export, provider="cpu")
    assert same(hits(found), brute_force(output, queries, 4, rescore=20))


def test_queries_only_from_the_model_that_made_the_output(embedder, corpus, tmp_path):
    output = tmp_path / "v.npy"
    embed_corpus(embedder, corpus, output)
    with pytest.raises(OutputError, match=r"v.npy was embedded by another model than .*"
                       r"albert-minilm-small \(graph_sha256, .*dimension.* differ\)"):  # fmt: skip
        search_output(output, ["a query"])  # the shipped model, not the one that made it
    output.with_name("v.npy.manifest.json").unlink()
    with pytest.raises(OutputError, match=r"no v.npy.manifest.json beside it"):
        search_output(output, ["a query"])


def test_the_cli_prints_one_json_line_per_hit(english_export, embedder, corpus, tmp_path):
    output = tmp_path / "out"
    embed_corpus(embedder, corpus, output, id_field="doc_id", dtype="int8")
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUERIES[1:3]))
    done = run_cli("search", output, QUERIES[0], "--queries", queries, "-k", "3", "--json",
                   "--model", english_export, "--provider", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [sorted(line) for line in lines] == [["id", "query", "rank", "score"]] * 9
    expected = search_output(output, QUERIES[:3], k=3, model=english_export, provider="cpu")
    assert [(line["query"], line["rank"], line["id"]) for line in lines] == [
        (h.query, h.rank, h.id) for query in expected for h in query
    ]
    assert np.allclose([line["score"] for line in lines],
                       [h.score for query in expected for h in query], rtol=1e-3)  # fmt: skip


def test_an_output_many_times_its_chunk_is_searched_in_bounded_memory(english_export, tmp_path):
    """600 MB of float32 vectors (made here, with the manifest of a real output)."""
    from albert_onnx import Embedder

    small = tmp_path / "small.npy"
    model = Embedder(english_export, provider="cpu", precision="fp32")
    embed_corpus(model, write_jsonl(tmp_path / "c.jsonl", ["one", "two"]), small)
    manifest = json.loads(small.with_name("small.npy.manifest.json").read_text())
    rows, dimension = 2_400_000, model.dimension
    big = tmp_path / "big.npy"
    vectors = np.lib.format.open_memmap(big, "w+", np.float32, (rows, dimension))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100_000):
        vectors[start : start + 100_000] = rng.standard_normal((100_000, dimension))
    query = model.embed(["one"])[0]
    vectors[876_543] = 100 * query / np.linalg.norm(query)  # the best hit by far
    vectors.flush()
    del vectors
    with open(tmp_path / "big.npy.ids.jsonl", "w") as f:
        f.writelines(f"{i}\n" for i in range(rows))
    (tmp_path / "big.npy.manifest.json").write_text(json.dumps({**manifest, "rows": rows}))
    assert big.stat().st_size > 600e6
    peak = cli_peak_rss_mb("search", big, "one", "-k", "1", "--json", "--model", english_export,
                           "--provider", "cpu")  # fmt: skip
    assert peak < 400, f"peak RSS {peak:.0f} MB for a 600 MB output"
    found = search_output(big, ["one"], k=1, model=english_export, provider="cpu")
    assert found[0][0].id == 876_543


def test_ranges_come_from_the_output(embedder, english_export, corpus, tmp_path):
    """An int8 output's queries are quantized with the output's own ranges."""
    output = tmp_path / "v.parquet"
    embed_corpus(embedder, corpus, output, dtype="uint8", calibration_texts=10)
    stored = open_stored(str(output))
    assert stored.ranges is not None and stored.ranges.source.startswith("the first 10 records")
    assert isinstance(stored.ranges, Ranges)
