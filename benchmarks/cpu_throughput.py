"""Runtime throughput on this CPU for an albert-base-v2-shaped model, end to end on real text.

    python benchmarks/cpu_throughput.py [--out benchmarks/results]

Exports a random-weight albert-base-v2-shaped checkpoint (real tokenizer) with --quantize,
then embeds real text (WikiText-2 paragraphs and headings + STS-B test sentences, from
tests/data) for INT8 and fp32: in memory through `time_embedding`, tokenization included,
length-sorted and in arrival order (the same arithmetic for both, so they compare), and
as the file job (`embed_corpus`: JSONL in, .npy out, shards, lock and fingerprints
included). All runs are in one process, so the ratios between them are comparable even
on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

from corpora import mixed, sts_sentences, wikitext_lines, write_jsonl
from machine import cpu_description
from random_albert import build

from albert_onnx import Embedder
from albert_onnx.export.exporter import export_model
from albert_onnx.runtime.bench import time_embedding
from albert_onnx.runtime.job import embed_corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model_dir = work / "albert-base-shape"
    start = time.perf_counter()
    export_model(str(build(work / "ckpt", "base")), model_dir, quantize=True)
    export_seconds = time.perf_counter() - start
    texts = mixed(wikitext_lines(), sts_sentences(("test",))[:600])
    corpus = write_jsonl(work / "corpus.jsonl", texts)
    docs = len(texts)
    runs = []
    for precision in ("int8", "fp32"):
        embedder = Embedder(model_dir, provider="cpu", precision=precision)
        embedder.embed(texts[:32])  # warm-up
        for path in ("memory, length-sorted", "memory, arrival order", "file job, length-sorted"):
            if path.startswith("file"):
                stats = embed_corpus(embedder, corpus, work / f"{precision}.npy").stats
            else:
                stats = time_embedding(embedder, texts, bucketing="sorted" in path)
            runs.append(
                {
                    "precision": precision,
                    "path": path,
                    "docs": stats.docs,
                    "real_tokens": stats.tokens,
                    "padding_overhead": stats.padding_overhead,
                    "seconds": stats.seconds,
                    "docs_per_s": stats.docs_per_s,
                    "real_tokens_per_s": stats.tokens_per_s,
                }
            )
            print(json.dumps(runs[-1]))

    report = {
        "command": "python benchmarks/cpu_throughput.py",
        "machine": cpu_description(),
        "versions": {
            d: metadata.version(d)
            for d in ("onnxruntime", "tokenizers", "numpy", "torch", "transformers")
        },
        "model": "albert-base-v2 shape (E=128, H=768, 12 layers), random weights, real tokenizer",
        "max_batch_tokens": Embedder(model_dir, provider="cpu").max_batch_tokens,
        "export_seconds": export_seconds,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| precision | path | docs/s | real tokens/s | padding overhead | seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['precision']} | {r['path']} | "
        f"{r['docs_per_s']:.1f} | {r['real_tokens_per_s']:,.0f} | "
        f"{r['padding_overhead']:.1%} | {r['seconds']:.1f} |"
        for r in runs
    ]
    (args.out / "cpu_throughput.md").write_text(
        f"# CPU throughput ({report['machine']['cpu']}, {report['machine']['threads']} threads)\n\n"
        f"Command: `{report['command']}`  \nModel: {report['model']}  \n"
        f"Corpus: {docs} real texts (WikiText-2 + STS-B test)  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
