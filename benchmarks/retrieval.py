"""What each output precision keeps, and what search costs.

    python benchmarks/retrieval.py [--rows 1000000] [--queries 100]

1. Quality, on a retrieval task made from STS-B (tests/data/corpora, train + dev + test):
   each pair's sentence1 is a query, and its sentence2 the one right answer among every
   distinct sentence2 (the corpus). The shipped model (albert-minilm-small) embeds the
   corpus with `embed_corpus` once per dtype, and `search_output` finds each query's
   10 best: recall@1 and recall@10 over all pairs, and over the pairs whose gold score is at
   least 4 (paraphrases), with the bytes each vector takes.
2. Speed: search over ROWS synthetic vectors of 384 dimensions, with QUERIES random
   queries: exact over a float32 .npy and over its packed bits (ubinary, and rescored), and
   a Lance dataset of the same floats, scanned exactly and through the IVF_PQ index that
   `--index` builds (its build time, and its recall@10 against the exact scan); seconds per
   query batch, the reading included (the files in the page cache after one warm-up run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from machine import cpu_description

from albert_onnx import Embedder
from albert_onnx.runtime.io.formats import arrow_batches
from albert_onnx.runtime.io.lance_dataset import write_lance
from albert_onnx.runtime.io.storage import locate
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.quantize import quantize, storage
from albert_onnx.runtime.search.search import search, search_output
from albert_onnx.runtime.search.stored import open_stored

CORPORA = Path(__file__).parents[1] / "tests" / "data" / "corpora"
QUALITY = (("float32", None), ("float16", None), ("int8", None), ("uint8", None),
           ("binary", None), ("binary", 40), ("binary", 100),
           ("float32 .lance + IVF_PQ index", None))  # fmt: skip


def sts_pairs() -> list[tuple[str, str, float]]:
    pairs = []
    for split in ("train", "dev", "test"):
        for line in (CORPORA / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            pairs.append((fields[5], fields[6], float(fields[4])))
    return pairs


def quality(work: Path, model: Embedder) -> tuple[list[dict], int, int, int]:
    """Recall rows by precision; the pairs, the paraphrase pairs and the corpus's size."""
    pairs = sts_pairs()
    corpus = list(dict.fromkeys(second for _, second, _ in pairs))
    position = {text: i for i, text in enumerate(corpus)}
    answer = [position[second] for _, second, _ in pairs]
    paraphrase = np.array([score >= 4 for *_, score in pairs])
    source = work / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    queries = [first for first, _, _ in pairs]
    rows, written = [], {}
    for dtype, rescore in QUALITY:
        output = written.get(dtype)
        if output is None and dtype.endswith("index"):
            output = written[dtype] = work / "indexed.lance"
            embed_corpus(model, source, output, index=True)
        elif output is None:
            output = written[dtype] = work / f"{dtype}.npy"
            embed_corpus(model, source, output, dtype=dtype)  # ids: line numbers from 1
        start = time.perf_counter()
        found = search_output(output, queries, k=10, rescore=rescore, model=model.model_dir)
        seconds = time.perf_counter() - start
        ranks = np.array([next((h.rank for h in hits if h.id == answer[q] + 1), 11)
                          for q, hits in enumerate(found)])  # fmt: skip
        numpy_dtype, width = storage(dtype.split()[0], model.dimension)
        rows.append({
            "dtype": dtype if rescore is None else f"{dtype} + rescore {rescore}",
            "bytes_per_vector": width * numpy_dtype.itemsize,
            "recall_at_1": float((ranks == 1).mean()),
            "recall_at_10": float((ranks <= 10).mean()),
            "paraphrase_recall_at_1": float((ranks[paraphrase] == 1).mean()),
            "paraphrase_recall_at_10": float((ranks[paraphrase] <= 10).mean()),
            "search_seconds": seconds,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows, len(pairs), int(paraphrase.sum()), len(corpus)


def synthetic(work: Path, model: Embedder, rows: int, dimension: int) -> dict[str, Path]:
    """ROWS random vectors as a float32 .npy and a ubinary .npy, each with the manifest of
    a real output of MODEL (what search reads), written a block at a time."""
    tiny = work / "tiny.jsonl"
    tiny.write_text('{"text": "one"}\n')
    made = {}
    for dtype in ("float32", "ubinary"):  # then a Lance dataset of the float32 vectors
        embed_corpus(model, tiny, work / f"tiny-{dtype}.npy", dtype=dtype)
        manifest = json.loads((work / f"tiny-{dtype}.npy.manifest.json").read_text())
        path = work / f"synthetic-{dtype}.npy"
        numpy_dtype, width = storage(dtype, dimension)
        array = np.lib.format.open_memmap(path, "w+", numpy_dtype, (rows, width))
        rng = np.random.default_rng(0)
        for start in range(0, rows, 100_000):
            block = rng.standard_normal((min(100_000, rows - start), dimension), np.float32)
            array[start : start + len(block)] = quantize(block, dtype)
        array.flush()
        del array
        with open(f"{path}.ids.jsonl", "w") as f:
            f.writelines(f"{i}\n" for i in range(rows))
        Path(f"{path}.manifest.json").write_text(json.dumps({**manifest, "rows": rows}))
        made[dtype] = path
    floats = open_stored(str(made["float32"]))
    lance_path = work / "synthetic.lance"
    schema, batches = arrow_batches(_Rows(floats, rows), np.dtype(np.float32), dimension, "int",
                                    keep_text=False)  # fmt: skip
    start = time.perf_counter()
    write_lance(locate(str(lance_path)), schema, batches, True, True, dimension, rows)
    made["index_seconds"] = time.perf_counter() - start
    Path(f"{lance_path}.manifest.json").write_text(
        Path(f"{made['float32']}.manifest.json").read_text()
    )
    made["lance"] = lance_path
    return made


class _Rows:
    """A stored output's chunks as the formats read rows (what a commit hands them)."""

    def __init__(self, stored, rows: int) -> None:
        self.stored, self.rows, self.vector_rows = stored, rows, rows

    def chunks(self):
        return ((ids, vectors, []) for ids, vectors in self.stored.chunks())


def speed(made: dict, queries: int, dimension: int) -> list[dict]:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((queries, dimension), np.float32)
    rows, exact_hits = [], None
    runs = (("float32 .npy", "float32", None, True), ("ubinary .npy", "ubinary", None, True),
            ("ubinary .npy + rescore 40", "ubinary", 40, True),
            ("Lance, exact scan", "lance", None, True),
            ("Lance, IVF_PQ index", "lance", None, False))  # fmt: skip
    for name, key, rescore, exact in runs:
        stored = open_stored(str(made[key]))
        search(stored, vectors[:1], 10, rescore, exact)  # warm-up: the file in the page cache
        for count in (1, queries):
            start = time.perf_counter()
            found = search(stored, vectors[:count], 10, rescore, exact)
            seconds = time.perf_counter() - start
            row = {"vectors": name, "queries": count, "seconds": seconds,
                   "bytes": _size(made[key])}  # fmt: skip
            if count == queries and key == "float32":
                exact_hits = found
            if count == queries and key == "lance" and not exact:
                row["recall_at_10_vs_exact"] = float(np.mean([
                    len({h.id for h in a} & {h.id for h in e}) / 10
                    for a, e in zip(found, exact_hits, strict=True)]))  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="retrieval-"))
    model = Embedder()  # the shipped model, its INT8 graph on the CPU
    found, pairs, paraphrases, corpus = quality(work, model)
    made = synthetic(work, model, args.rows, model.dimension)
    timings = speed(made, args.queries, model.dimension)
    index_seconds = made["index_seconds"]
    report = {
        "command": f"python benchmarks/retrieval.py --rows {args.rows} --queries {args.queries}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in ("albert-onnx", "numpy", "onnxruntime")},
        "model": f"{model.model_dir.name} ({model.pipeline.precision} graph, "
        f"{model.dimension} dimensions)",
        "pairs": pairs, "paraphrase_pairs": paraphrases, "corpus": corpus,
        "quality": found, "rows": args.rows, "speed": timings,
        "lance_write_and_index_seconds": index_seconds,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrieval.json").write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    lines = [
        f"# Retrieval quality and search speed by precision ({machine['cpu']}, "
        f"{machine['threads']} threads, flags {' '.join(machine['flags'])})",
        "",
        f"Command: `{report['command']}`  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}  ",
        f"Model: {report['model']}",
        "",
        f"STS-B as retrieval: {pairs:,} queries (each pair's sentence1) over {corpus:,} distinct "
        f"sentence2s, one right answer each; {paraphrases:,} of the pairs are paraphrases "
        "(gold score >= 4). The last row searches the float32 vectors as a Lance dataset "
        "through its IVF_PQ index (`--index`: 31 partitions for this corpus, 20 probed, 10x "
        "the candidates refined by their exact scores).",
        "",
        "| vectors | bytes/vector | R@1 | R@10 | paraphrases R@1 | paraphrases R@10 | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in found:
        lines.append(
            f"| {r['dtype']} | {r['bytes_per_vector']} | {r['recall_at_1']:.3f} | "
            f"{r['recall_at_10']:.3f} | {r['paraphrase_recall_at_1']:.3f} | "
            f"{r['paraphrase_recall_at_10']:.3f} | {r['search_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Search over {args.rows:,} synthetic vectors (random normal, {model.dimension} "
        "dimensions), k = 10, the files in the page cache. The Lance dataset was written and "
        f"indexed (IVF_PQ, inner product, 1,000 partitions) in {index_seconds:,.0f} s; its "
        "recall@10 is against the exact float32 scan. Random vectors do not cluster, so "
        "probing 20 of 1,000 partitions finds about 2% of the true neighbours: these rows "
        "time the index, and the STS-B row above measures it on real vectors.",
        "",
        "| vectors | MB | queries | seconds | ms per query | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in timings:
        recall = r.get("recall_at_10_vs_exact")
        lines.append(
            f"| {r['vectors']} | {r['bytes'] / 1e6:,.0f} | {r['queries']} | {r['seconds']:.2f} "
            f"| {r['seconds'] / r['queries'] * 1000:,.1f} | "
            f"{'' if recall is None else f'{recall:.3f}'} |"
        )
    (args.out / "retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
