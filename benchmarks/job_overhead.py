"""What the corpus job's safety costs on a 100,000-line corpus: the corpus fingerprint (sha256
of every line read), its check on --resume, the output lock, and the duplicate-id count,
beside the whole job on the shipped default model (INT8, this CPU).

    python benchmarks/job_overhead.py [--lines 100000] [--out benchmarks/results]

The corpus is STS-B sentences (tests/data) repeated to LINES lines, with string ids. Every
figure comes from this one process, one after another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

from corpora import sts_sentences
from machine import cpu_description

from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.output_lock import OutputLock
from albert_onnx.runtime.reader import open_corpus
from albert_onnx.runtime.stats import count_duplicates


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    sentences = sts_sentences(("train", "dev", "test"))
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(args.lines):
            f.write(json.dumps({"id": f"doc-{i}", "text": sentences[i % len(sentences)]}) + "\n")
    size = corpus.stat().st_size

    reader = open_corpus(corpus, id_field="id")
    read_seconds = timed(lambda: sum(1 for _ in reader))
    lines = corpus.read_bytes().splitlines(keepends=True)

    def hash_lines() -> None:
        digest = hashlib.sha256()
        for line in lines:
            digest.update(line)

    fingerprint_seconds = min(timed(hash_lines) for _ in range(3))  # the reader's extra work
    at_end = reader.position()
    verify_seconds = timed(lambda: list(open_corpus(corpus, id_field="id", start=at_end)))

    lock = OutputLock(work / "v.npy.lock", work / "v.npy")

    def lock_cycle() -> None:
        for _ in range(1000):
            lock.acquire()
            lock.release()

    lock_seconds = timed(lock_cycle) / 1000
    ids = [[f"doc-{i}" for i in range(start, min(start + 4096, args.lines))]
           for start in range(0, args.lines, 4096)]  # fmt: skip
    duplicates_seconds = timed(lambda: count_duplicates(ids))

    embedder = Embedder(provider="cpu")
    embedder.embed(sentences[:64])  # warm-up
    job = embed_corpus(embedder, corpus, work / "v.npy", id_field="id").stats
    report = {
        "command": f"python benchmarks/job_overhead.py --lines {args.lines}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in ("onnxruntime", "tokenizers", "numpy")},
        "corpus": {"lines": args.lines, "bytes": size},
        "seconds": {
            "read_and_parse_all_lines_with_fingerprint": read_seconds,
            "fingerprint_share_of_that_sha256_per_line": fingerprint_seconds,
            "resume_check_of_the_whole_prefix": verify_seconds,
            "lock_acquire_and_release": lock_seconds,
            "duplicate_id_count": duplicates_seconds,
            "whole_job_default_model_int8": job.seconds,
        },
        "job": {"docs": job.docs, "tokens": job.tokens, "tokens_per_s": job.tokens_per_s},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "job_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    s = report["seconds"]
    share = (s["fingerprint_share_of_that_sha256_per_line"] + s["duplicate_id_count"]
             + s["lock_acquire_and_release"]) / s["whole_job_default_model_int8"]  # fmt: skip
    rows = [
        ("reading and parsing every line, fingerprint included", s[
            "read_and_parse_all_lines_with_fingerprint"]),
        ("of which the fingerprint (sha256 of each line)", s[
            "fingerprint_share_of_that_sha256_per_line"]),
        ("--resume: checking the whole consumed prefix", s["resume_check_of_the_whole_prefix"]),
        ("output lock: acquire + release", s["lock_acquire_and_release"]),
        ("duplicate-id count at the end", s["duplicate_id_count"]),
        ("the whole job (shipped model, INT8, .npy)", s["whole_job_default_model_int8"]),
    ]  # fmt: skip
    (args.out / "job_overhead.md").write_text(
        f"# Corpus job overhead ({report['machine']['cpu']}, {report['machine']['threads']} "
        f"threads, flags {' '.join(report['machine']['flags'])})\n\n"
        f"Command: `{report['command']}`  \n"
        f"Corpus: {args.lines:,} lines, {size / 1e6:.1f} MB (STS-B sentences, string ids)  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        "| what | seconds |\n|---|---|\n"
        + "".join(f"| {what} | {seconds:.4f} |\n" for what, seconds in rows)
        + f"\nFingerprint, lock and duplicate count together: {share:.2%} of the job.\n"
    )
    print((args.out / "job_overhead.md").read_text())


if __name__ == "__main__":
    main()
