"""`embed --ray` on this machine, in one sitting: what its driver costs at two corpus sizes,
and its throughput beside the local executor.

    python benchmarks/scale_out.py [--driver-records 20000 200000] [--records 80000]

The corpus is real text (STS-B sentences of every split and WikiText-2 paragraphs, repeated
to the size asked), as Parquet (row groups of 2,048 rows). A local Ray instance is started
here, and each `embed --ray` driver is a process of its own that connects to it
(`--ray-address`), so that its own peak RSS (VmHWM) and the bytes it read and wrote
(`/proc/PID/io`: rchar and wchar, everything through its system calls, sockets included:
the input, the vectors and the parts would all show there) are its alone; the time to the
first part is from the driver's start to the first part file in the output. Then, at
`--records`, the local executor (`embed_corpus`, every core) against Ray with 2 workers of 1
thread, alternating twice, each from a fresh process, both writing a directory of parts:
records/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from corpora import sts_sentences, wikitext_lines
from machine import cpu_description

from albert_onnx.runtime.pipeline.providers import cpu_threads

PART_ROWS = 4096

# The driver, run as the CLI runs, reporting its own peak memory and I/O at exit
DRIVER = """
import atexit, sys
def report():
    status = open('/proc/self/status').read()
    io = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())
    sys.stderr.write('DRIVER ' + str({'peak_rss_kb': int(status.split('VmHWM:')[1].split()[0]),
                     'rchar': int(io['rchar']), 'wchar': int(io['wchar'])}) + '\\n')
atexit.register(report)
from albert_onnx.cli import app
sys.argv = ['albert-onnx', *sys.argv[1:]]
app()
"""
LOCAL = """
import json, sys, time
from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
embedder = Embedder(provider='cpu')
start = time.perf_counter()
summary = embed_corpus(embedder, sys.argv[1], sys.argv[2], id_field='id', force=True,
                       part_rows=int(sys.argv[3]))
print(json.dumps({'seconds': time.perf_counter() - start, 'docs': summary.stats.docs,
                  'tokens': summary.stats.tokens}))
"""


def corpus(work: Path, records: int) -> Path:
    pool = sts_sentences(("train", "dev", "test")) + wikitext_lines()
    texts = (pool * (records // len(pool) + 1))[:records]
    path = work / f"corpus-{records}.parquet"
    pq.write_table(pa.table({"id": list(range(records)), "text": texts}), path,
                   row_group_size=2048)  # fmt: skip
    return path


def run_driver(address: str, source: Path, output: Path, workers: int, threads: int) -> dict:
    """One `embed --ray` driver: its own figures, its summary, the time to its first part."""
    args = [sys.executable, "-c", DRIVER, "embed", str(source), "-o", str(output), "--ray",
            "--ray-address", address, "--id-field", "id", "--workers", str(workers),
            "--threads-per-worker", str(threads), "--part-rows", str(PART_ROWS),
            "--provider", "cpu", "--no-progress", "--force"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    first_part = None
    while process.poll() is None:
        if first_part is None and output.is_dir() and any(output.glob("part-*.parquet")):
            first_part = time.perf_counter() - start
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    stdout, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(stderr)
    driver = eval(stderr.rsplit("DRIVER ", 1)[1].splitlines()[0])  # the dict printed above
    docs = int(stdout.split(" docs,")[0].split()[-1].replace(",", ""))
    tokens = int(stdout.split(" tokens (")[0].split()[-1].replace(",", ""))
    return {"seconds": seconds, "first_part_seconds": first_part, "docs": docs,
            "tokens": tokens, **driver}  # fmt: skip


def run_local(source: Path, output: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOCAL, str(source), str(output),
                           str(PART_ROWS)], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver-records", type=int, nargs="*", default=[20_000, 200_000])
    parser.add_argument("--records", type=int, default=80_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    start = time.perf_counter()
    ray.init(num_cpus=cpu_threads(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    address = ray.get_runtime_context().gcs_address
    try:
        drivers = []
        for records in args.driver_records:
            found = run_driver(address, corpus(work, records), work / f"driver-{records}", 2, 1)
            drivers.append({"records": records, **found})
            print("driver", json.dumps(drivers[-1]), flush=True)
        source = corpus(work, args.records)
        rates: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(args.rounds):
            local = run_local(source, work / "local-out")  # a directory of parts, as Ray writes
            rates["local"].append(local["docs"] / local["seconds"])
            found = run_driver(address, source, work / "ray-out", 2, 1)
            rates["ray"].append(found["docs"] / found["seconds"])
            print("throughput", json.dumps({k: v[-1] for k, v in rates.items()}), flush=True)
    finally:
        ray.shutdown()
    ratio = statistics.mean(rates["ray"]) / statistics.mean(rates["local"])
    growth = {
        key: drivers[-1][key] / drivers[0][key] - 1
        for key in ("peak_rss_kb", "rchar", "wchar", "first_part_seconds")
    }
    report = {
        "command": "python benchmarks/scale_out.py --driver-records "
        + " ".join(map(str, args.driver_records))
        + f" --records {args.records}"
        + f" --rounds {args.rounds}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in ("onnxruntime", "ray", "pyarrow")},
        "model": "albert-minilm-small (shipped), INT8 on the CPU",
        "part_rows": PART_ROWS,
        "ray_start_seconds": ray_start,
        "drivers": drivers,
        "driver_growth": growth,
        "records_per_s": rates,
        "ray_over_local": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| records | driver peak RSS MB | driver read MB | driver wrote MB | first part s "
             "| job s | records/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for d in drivers:
        lines.append(f"| {d['records']:,} | {d['peak_rss_kb'] / 1024:.1f} | "
                     f"{d['rchar'] / 1e6:.2f} | {d['wchar'] / 1e6:.2f} | "
                     f"{d['first_part_seconds']:.1f} | {d['seconds']:.1f} | "
                     f"{d['docs'] / d['seconds']:,.0f} |")  # fmt: skip
    lines += ["", f"Growth from {args.driver_records[0]:,} to {args.driver_records[-1]:,} "
              "records: " + ", ".join(f"{k} {v:+.1%}" for k, v in growth.items()), "",
              "| run | records/s (each round) | mean |", "|---|---|---|"]  # fmt: skip
    for name, label in (("local", "local executor, 2 threads"),
                        ("ray", "Ray, 2 workers x 1 thread")):  # fmt: skip
        lines.append(f"| {label} | {', '.join(f'{r:,.0f}' for r in rates[name])} | "
                     f"{statistics.mean(rates[name]):,.0f} |")  # fmt: skip
    machine = report["machine"]
    (args.out / "scale_out.md").write_text(
        f"# embed --ray on one machine ({machine['cpu']}, {machine['threads']} threads, flags "
        f"{' '.join(machine['flags'])})\n\n"
        f"Command: `{report['command']}`  \n"
        f"Model: {report['model']}; real texts as Parquet, parts of {PART_ROWS:,} rows  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        + "\n".join(lines)
        + f"\n\nRay over the local executor at {args.records:,} records: {ratio:.3f}x. "
        f"Ray's own start (a local instance, here): {ray_start:.1f} s, not in the rows.\n"
    )
    print((args.out / "scale_out.md").read_text())


if __name__ == "__main__":
    main()
