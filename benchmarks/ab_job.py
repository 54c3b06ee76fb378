"""Before/after: the corpus job of two albert-onnx installs, interleaved, on one model.

    python benchmarks/ab_job.py --old-python /tmp/venv-old/bin/python [--rounds 5]

Runs `embed_corpus` (JSONL in, .npy out, length-sorted, after a warm-up) with the old and
the new install alternately, each run in its own process, so that a machine that slows
down or speeds up during the sitting weighs on both alike; reports real tokens/s per run,
the medians and their ratio. The old install is another checkout of this repository,
installed into a virtualenv that borrows this one's dependencies, for example:

    git worktree add /tmp/old-main COMMIT
    python3 -m venv /tmp/venv-old
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/venv-old/lib/python3.11/site-packages/deps.pth
    /tmp/venv-old/bin/pip install --no-deps -e /tmp/old-main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from corpora import mixed, sts_sentences, wikitext_lines, write_jsonl
from machine import cpu_description
from random_albert import build

from albert_onnx.export.exporter import export_model

# Runs inside each install's own Python: the corpus job moved from runtime.corpus (before
# issue 10) to runtime.job, and its summary's counts into .stats.
ONE_RUN = """
import json, sys, time
from pathlib import Path
from albert_onnx import Embedder
try:
    from albert_onnx.runtime.job import embed_corpus
except ImportError:
    from albert_onnx.runtime.corpus import embed_corpus
model, corpus, out, precision = sys.argv[1:5]
embedder = Embedder(model, provider="cpu", precision=precision)
embedder.embed(["a warm-up text"] * 32)
start = time.perf_counter()
summary = embed_corpus(embedder, Path(corpus), Path(out), force=True)
seconds = time.perf_counter() - start
tokens = getattr(summary, "stats", summary).tokens
print(json.dumps({"seconds": seconds, "tokens": tokens}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-python", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model = work / "albert-base-shape"
    export_model(str(build(work / "ckpt", "base")), model, quantize=True)
    texts = mixed(wikitext_lines(), sts_sentences(("test",))[:600])
    corpus = write_jsonl(work / "corpus.jsonl", texts)
    pythons = {"old": args.old_python, "new": sys.executable}
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        for name, python in pythons.items():
            result = subprocess.run(
                [python, "-c", ONE_RUN, str(model), str(corpus), str(work / f"{name}.npy"),
                 args.precision],
                capture_output=True, text=True, check=True, cwd=work,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )  # fmt: skip
            run = json.loads(result.stdout.strip().splitlines()[-1])
            rates[name].append(run["tokens"] / run["seconds"])
            print(f"round {round_} {name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    report = {
        "command": f"python benchmarks/ab_job.py --old-python OLD --rounds {args.rounds}",
        "machine": cpu_description(),
        "model": "albert-base-v2 shape, random weights, real tokenizer",
        "precision": args.precision,
        "docs": len(texts),
        "tokens_per_s": rates,
        "medians": medians,
        "new_over_old": medians["new"] / medians["old"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_job.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"medians": medians, "new_over_old": report["new_over_old"]}, indent=2))


if __name__ == "__main__":
    main()
