"""Before/after: the corpus job of an older albert-onnx and this one, interleaved, on the
shipped model; then this job's peak memory and state on growing corpora.

    python benchmarks/ab_job.py --before-site DIR [--before-label TEXT] [--rounds 2]
                                [--records 100000] [--rss-records 100000 1000000]

The older install lives in a directory of its own (`pip install --no-deps --target DIR
OLD_CHECKOUT`), run with PYTHONPATH=DIR from a working directory outside this checkout.
Each run is its own process, alternating before and after (which goes first alternates
too), so that a machine that slows down or speeds up during the sitting weighs on both
alike. Three inputs of the same short records (STS-B sentences, each with its index): one
JSONL file, a directory of 20 JSONL files, a Parquet dataset of 10 files. The older job
reads one file only, so for the two sharded inputs it reads the same records as one file;
the ratio is then what reading a dataset costs against reading a file. Then: this job's
peak RSS (VmHWM) at each `--rss-records` size, and the bytes of state it wrote
(`_state.json` once; each part's own metadata).
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

import pyarrow as pa
import pyarrow.parquet as pq
from corpora import sts_sentences
from machine import cpu_description

# Runs inside each install's own Python, after a warm-up; reports the whole job's time.
ONE_RUN = """
import json, sys, time
from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
corpus, out = sys.argv[1:3]
embedder = Embedder(provider="cpu")
embedder.embed(["a warm-up text"] * 32)
start = time.perf_counter()
summary = embed_corpus(embedder, corpus, out, id_field="id", force=True)
seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
print(json.dumps({"seconds": seconds, "docs": summary.stats.docs,
                  "tokens": summary.stats.tokens,
                  "peak_rss_mb": int(status.split("VmHWM:")[1].split()[0]) / 1024}))
"""


def records(count: int) -> list[dict]:
    sentences = sts_sentences(("train", "dev", "test"))
    return [{"id": i, "text": f"{sentences[i % len(sentences)]} ({i})"} for i in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def datasets(work: Path, count: int) -> dict[str, tuple[Path, Path]]:
    """name -> (what this job reads, what the older job reads: the same records)."""
    rows = records(count)
    single = write_jsonl(work / "single.jsonl", rows)
    size = -(-count // 20)
    for n in range(20):
        write_jsonl(work / "jsonl-dir" / f"part-{n:02d}.jsonl", rows[n * size : (n + 1) * size])
    table = pa.Table.from_pylist(rows)
    (work / "parquet-dir").mkdir()
    size = -(-count // 10)
    for n in range(10):
        pq.write_table(table.slice(n * size, size), work / "parquet-dir" / f"p{n}.parquet",
                       row_group_size=2048)  # fmt: skip
    pq.write_table(table, work / "all.parquet", row_group_size=2048)
    return {
        f"one {count:,}-line JSONL file": (single, single),
        "a directory of 20 JSONL files": (work / "jsonl-dir", single),
        "a Parquet dataset of 10 files": (work / "parquet-dir", work / "all.parquet"),
    }


def run(corpus: Path, output: Path, site: Path | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if site:
        env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", ONE_RUN, str(corpus), str(output)], capture_output=True,
        text=True, env=env, cwd=site or output.parent, check=False,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def state_bytes(corpus: Path, output: Path) -> dict:
    """What the job wrote as state for OUTPUT (a finished directory output): its
    `_state.json`, written once at the start (rebuilt here as the job wrote it: the
    commit removes it), and each part file's own metadata."""
    from albert_onnx.runtime.jobs.plan import make_plan
    from albert_onnx.runtime.options import JobOptions

    manifest = json.loads((output / "_manifest.json").read_text())
    plan = make_plan([str(corpus)], JobOptions(id_field="id"))
    state = {"format": 1, "settings": manifest["settings"], "plan": plan.to_dict()}
    parts = sorted(output.glob("part-*.parquet"))
    metadata = [len(pq.read_metadata(p).metadata[b"albert_onnx"]) for p in parts]
    return {"state_json_bytes": len(json.dumps(state)), "parts": len(parts),
            "part_metadata_bytes": metadata}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before-site", type=Path, required=True)
    parser.add_argument("--before-label", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rss-records", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-job-"))
    inputs = datasets(work, args.records)
    rates: dict[str, dict[str, list[float]]] = {n: {"before": [], "after": []} for n in inputs}
    for round_ in range(args.rounds):
        for name, (ours, theirs) in inputs.items():
            sides = [("before", theirs, args.before_site), ("after", ours, None)]
            for side, corpus, site in sides if round_ % 2 == 0 else sides[::-1]:
                found = run(corpus, work / f"{side}.npy", site)
                assert found["docs"] == args.records, found
                rates[name][side].append(found["tokens"] / found["seconds"])
                print(f"round {round_} {name} {side}: {rates[name][side][-1]:,.0f} tokens/s",
                      flush=True)  # fmt: skip
    ratios = {
        name: statistics.median(r["after"]) / statistics.median(r["before"])
        for name, r in rates.items()
    }
    memory = []
    for count in args.rss_records:
        corpus = write_jsonl(work / f"rss-{count}.jsonl", records(count))
        output = work / f"rss-{count}"
        found = run(corpus, output, None)
        memory.append({"records": count, "peak_rss_mb": found["peak_rss_mb"],
                       "seconds": found["seconds"], **state_bytes(corpus, output)})  # fmt: skip
        print(json.dumps(memory[-1])[:300], flush=True)
    report = {
        "command": "python benchmarks/ab_job.py --before-site DIR"
        + (f" --before-label '{args.before_label}'" if args.before_label else "")
        + f" --rounds {args.rounds} --records {args.records} --rss-records "
        + " ".join(map(str, args.rss_records)),
        "machine": cpu_description(),
        "before": args.before_label or str(args.before_site),
        "model": "albert-minilm-small (shipped), INT8 on the CPU",
        "tokens_per_s": rates,
        "after_over_before": ratios,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab_job.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| input | before tokens/s (median) | after tokens/s (median) | after / before |",
             "|---|---|---|---|"]  # fmt: skip
    for name, r in rates.items():
        lines.append(f"| {name} | {statistics.median(r['before']):,.0f} | "
                     f"{statistics.median(r['after']):,.0f} | {ratios[name]:.3f} |")  # fmt: skip
    lines += ["", "| records | peak RSS MB | s | parts | _state.json bytes (once) | "
              "part metadata bytes (each, min-max) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for m in memory:
        sizes = m["part_metadata_bytes"]
        lines.append(f"| {m['records']:,} | {m['peak_rss_mb']:.1f} | {m['seconds']:.0f} | "
                     f"{m['parts']} | {m['state_json_bytes']:,} | "
                     f"{min(sizes):,}-{max(sizes):,} |")  # fmt: skip
    machine = report["machine"]
    (args.out / "ab_job.md").write_text(
        f"# The corpus job, before and after ({machine['cpu']}, {machine['threads']} threads, "
        f"flags {' '.join(machine['flags'])})\n\n"
        f"Command: `{report['command']}`  \nBefore: {report['before']}; after: this checkout  \n"
        f"Model: {report['model']}; {args.records:,} short records (STS-B sentences)\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print((args.out / "ab_job.md").read_text())


if __name__ == "__main__":
    main()
