"""Memory stays flat: peak RSS of `embed` does not grow with the size of the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import OFFLINE_ENV, sts_sentences


def peak_rss_mb(args: list) -> float:
    """Run the CLI as a child and read that child's own peak RSS from wait4."""
    process = subprocess.Popen(
        [sys.executable, "-m", "albert_onnx", *map(str, args)],
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read()
    return usage.ru_maxrss / 1024


def test_peak_rss_is_independent_of_corpus_size(english_export, tmp_path):
    sentences = sts_sentences()
    sizes = (3_000, 30_000)
    peaks = []
    for n in sizes:
        corpus = tmp_path / f"c{n}.jsonl"
        with open(corpus, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"text": sentences[i % len(sentences)]}) + "\n")
        peaks.append(
            peak_rss_mb(
                [
                    "embed",
                    corpus,
                    "--model",
                    english_export,
                    "--output",
                    tmp_path / f"v{n}.npy",
                    "--window-texts",
                    "1000",
                    "--no-progress",
                ]
            )
        )
    small, large = peaks
    # 10x the documents (and output) may not cost more than a few MB of extra peak memory
    assert large <= small * 1.05 + 8, peaks
