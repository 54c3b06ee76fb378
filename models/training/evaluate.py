"""STS-benchmark Spearman of the teacher and the student, measured through the ONNX runtime.

    python models/training/evaluate.py --teacher .work/teacher \
        --student models/albert-minilm-small --out models/training/sts_eval.json

Every model is scored the way a user would run it: `Embedder(directory, precision=...)`,
cosine similarity of the two sentences' vectors, Spearman against the gold scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sts import cosine_spearman, read_pairs

from albert_onnx.runtime.embedder import Embedder


def score(model_dir: Path, precision: str, sts: Path) -> dict[str, float]:
    embedder = Embedder(model_dir, provider="cpu", precision=precision)
    scores = {}
    for split in ("dev", "test"):
        firsts, seconds, gold = read_pairs(sts / f"sts-{split}.csv")
        scores[split] = cosine_spearman(embedder.embed(firsts), embedder.embed(seconds), gold)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--sts", type=Path, default=Path("../shared/data/corpora/stsbenchmark"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [
        ("teacher all-MiniLM-L6-v2", args.teacher, "fp32"),
        ("student fp32", args.student, "fp32"),
        ("student INT8", args.student, "int8"),
    ]
    rows = [
        {"model": name, "precision": precision, **score(directory, precision, args.sts)}
        for name, directory, precision in runs
    ]
    args.out.write_text(
        json.dumps(
            {
                "command": "python models/training/evaluate.py "
                f"--teacher {args.teacher} --student {args.student}",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print("| model | STS-B dev Spearman | STS-B test Spearman |\n|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['dev']:.4f} | {row['test']:.4f} |")


if __name__ == "__main__":
    main()
