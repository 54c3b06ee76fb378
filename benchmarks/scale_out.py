"""One process against Ray Data on this machine, on the same Parquet corpus, in one run.

    python benchmarks/scale_out.py [--texts 20000] [--model DIR]

The corpus is real text (STS-B sentences of every split and WikiText-2 paragraphs, repeated
to TEXTS rows). The single-process row is the file job (`embed_corpus`, every core, Parquet
in, .npy out); the Ray rows are `embed_parts` on a local Ray instance with workers x threads
per worker in a few splits of the same cores (Parquet in, Parquet parts out). Ray's start
is timed apart from the jobs. Ray's overhead is single-process texts/s over Ray's, minus one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from corpora import sts_sentences, wikitext_lines
from machine import cpu_description

from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.providers import cpu_threads
from albert_onnx.runtime.ray_data import embed_parts

SPLITS = ((1, 2), (2, 1))  # (workers, threads per worker) on this machine's 2 cores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--model", default=None, help="model directory (default: shipped)")
    parser.add_argument("--part-rows", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    pool = sts_sentences(("train", "dev", "test")) + wikitext_lines()
    texts = (pool * (args.texts // len(pool) + 1))[: args.texts]
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), corpus,
                   row_group_size=4096)  # fmt: skip

    rows = []
    embedder = Embedder(args.model, provider="cpu")
    embedder.embed(texts[:64])  # warm-up
    single = embed_corpus(embedder, corpus, work / "single.npy", id_field="id").stats
    rows.append({"run": f"single process, {cpu_threads()} threads", "workers": 1,
                 "threads": cpu_threads(), "seconds": single.seconds, "docs": single.docs,
                 "tokens": single.tokens})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cpu_threads(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    for workers, threads in SPLITS:
        done = embed_parts(corpus, work / f"ray-{workers}x{threads}", args.model, id_field="id",
                           workers=workers, threads_per_worker=threads,
                           part_rows=args.part_rows)  # fmt: skip
        rows.append({"run": f"Ray Data, {workers} worker(s) x {threads} thread(s)",
                     "workers": workers, "threads": threads, "seconds": done.stats.seconds,
                     "docs": done.stats.docs, "tokens": done.stats.tokens})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()

    for row in rows:
        row["texts_per_s"] = row["docs"] / row["seconds"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["overhead_vs_single"] = rows[0]["texts_per_s"] / row["texts_per_s"] - 1
    report = {
        "command": f"python benchmarks/scale_out.py --texts {args.texts}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in ("onnxruntime", "ray", "pyarrow")},
        "model": embedder.model_dir.name,
        "precision": embedder.precision,
        "texts": len(texts),
        "part_rows": args.part_rows,
        "ray_start_seconds": ray_start,
        "per_core_tokens_per_s": rows[0]["tokens_per_s"] / cpu_threads(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "scale_out" if args.texts == 20_000 else f"scale_out_{args.texts}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    lines = ["| run | texts/s | tokens/s | seconds | Ray overhead |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['run']} | {r['texts_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
        f"{r['seconds']:.1f} | {r['overhead_vs_single']:+.1%} |"
        for r in rows
    ]
    (args.out / f"{name}.md").write_text(
        f"# Scale out on one machine ({machine['cpu']}, {machine['threads']} threads, flags "
        f"{' '.join(machine['flags'])})\n\n"
        f"Command: `{report['command']}`  \n"
        f"Model: {report['model']} ({report['precision']}), {len(texts):,} real texts "
        f"(Parquet), parts of {args.part_rows:,} rows  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        + "\n".join(lines)
        + f"\n\nRay's start (a local instance): {ray_start:.1f} s, not in the rows above. "
        f"Per core, single process: {report['per_core_tokens_per_s']:,.0f} tokens/s.\n"
    )
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
