"""Closed-loop load on `albert-onnx serve`, beside its two baselines, in one sitting.

    python benchmarks/serve_load.py [--model DIR] [--seconds 15] [--rss-requests 50000]
    python benchmarks/serve_load.py --fairness-only --before-site DIR [--fairness-seconds 60]

Everything runs on this machine over loopback: the servers are started as users start them
(`albert-onnx serve --port 0`, each in its own process) and stopped with SIGTERM; the load
generator is one asyncio process in this script, so it shares the CPU with the server (on
a 2-core machine that costs the server some throughput: the ratios are conservative).
Every level is bounded in time and in requests.

- Offline ceiling: `Embedder.embed` in this process on the same texts, all at once.
- Batching server (the default): clients at 1, 8, 64 and 256, each sending its next
  request to /v1/embeddings (base64, as the openai client asks) as soon as the last is
  answered, in two workloads of real texts (WikiText-2 paragraphs and STS-B sentences):
  requests of 1 to 16 texts ("mixed"), and one text per request ("single", query traffic).
- Naive server: the same server with --isolate-requests: each request runs alone, no
  batching across requests (what a server that wraps `embed` per request does).
- One client, one short text: the server's p50 beside the bare session (onnxruntime's
  `run` on the same tokenized text) and the whole in-process `Embedder.embed([text])`.
- Memory: 50,000 short requests; the server's RSS after the first 5,000 and at the end.
- INT8 batch companions: each text embedded alone and within a batch of others.
- Fairness: one client sending one-text requests while another sends requests of 256
  texts of 400 words, each as soon as its last is answered: the small requests' latency and
  the total throughput. With `--before-site DIR` (an older albert-onnx installed there with
  `pip install --no-deps --target DIR`), the same scenario, and the mixed workload at 64
  clients, also run on that server in the same sitting: before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from corpora import mixed, sts_sentences, wikitext_lines
from machine import cpu_description

from albert_onnx import Embedder
from albert_onnx.runtime.bench import time_embedding
from albert_onnx.runtime.pipeline.bucketer import pad_batch

LEVELS = (1, 8, 64, 256)
SHORT = "How do I reset my password?"


def start_server(
    model: str | None, *args: str, site: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """A server of this checkout's albert-onnx, or of the one installed in SITE."""
    command = [sys.executable, "-m", "albert_onnx", "serve", "--port", "0", *args]
    if model:
        command += ["--model", model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if site:  # sys.path comes before the editable install's finder; the checkout must not
        env["PYTHONPATH"] = str(site)  # be the working directory, which -m puts first
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=env, cwd=site or None
    )
    match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", process.stderr.readline())
    if not match:
        raise SystemExit(process.stderr.read())
    url = match.group(1)
    deadline = time.monotonic() + 120
    while httpx.get(url + "/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become ready")
        time.sleep(0.05)
    return process, url


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def closed_loop(
    url: str, clients: int, requests: list[list[str]], seconds: float, warmup: float = 3.0
) -> dict:
    """CLIENTS loops, each posting its next request when the last is answered, for SECONDS
    after WARMUP seconds (not counted), or until REQUESTS are all sent."""
    stats = {"latencies": [], "texts": 0, "tokens": 0, "statuses": {}}
    state = {"next": 0}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    async with client_session(url, clients) as http:

        async def client() -> None:
            while time.perf_counter() < end and state["next"] < len(requests):
                texts = requests[state["next"]]
                state["next"] += 1
                sent = time.perf_counter()
                body = {"input": texts, "encoding_format": "base64"}
                async with http.post("/v1/embeddings", json=body) as response:
                    answer = await response.read()
                done = time.perf_counter()
                if sent < measure_from or done > end:
                    continue
                code = str(response.status)
                stats["statuses"][code] = stats["statuses"].get(code, 0) + 1
                if response.status == 200:
                    stats["latencies"].append(done - sent)
                    stats["texts"] += len(texts)
                    stats["tokens"] += json.loads(answer)["usage"]["prompt_tokens"]

        await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = min(time.perf_counter(), end) - measure_from
    latencies = stats.pop("latencies")
    return {
        **stats,
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "texts_per_s": stats["texts"] / elapsed,
        "tokens_per_s": stats["tokens"] / elapsed,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


def server_tokens(url: str) -> float:
    """The tokens the server has embedded so far (its Prometheus counter)."""
    found = re.search(r"^albert_onnx_tokens_total (\S+)$", httpx.get(url + "/metrics").text, re.M)
    return float(found.group(1))


async def small_behind_large(url: str, large: list[str], seconds: float, warmup: float) -> dict:
    """One client sending LARGE again and again, another one short text at a time: the
    small requests' latency, the large ones', and the tokens the server embedded in the
    measured time (its own counter: a large request's tokens land in many batches)."""
    found: dict = {"small": [], "large": [], "statuses": {}}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    async with client_session(url, 2) as http:

        async def client(name: str, texts: list[str]) -> None:
            while time.perf_counter() < end:
                sent = time.perf_counter()
                body = {"input": texts, "encoding_format": "base64"}
                async with http.post("/v1/embeddings", json=body) as response:
                    await response.read()
                done = time.perf_counter()
                code = str(response.status)
                found["statuses"][code] = found["statuses"].get(code, 0) + 1
                if response.status == 200 and sent >= measure_from and done <= end:
                    found[name].append(done - sent)

        async def count() -> None:
            await asyncio.sleep(measure_from - time.perf_counter())
            found["tokens_at_start"] = await asyncio.to_thread(server_tokens, url)
            await asyncio.sleep(end - time.perf_counter())
            found["tokens_at_end"] = await asyncio.to_thread(server_tokens, url)

        await asyncio.gather(client("large", large), client("small", [SHORT]), count())
    small, big = found["small"], found["large"]
    return {
        "seconds": seconds,
        "small_requests": len(small),
        "small_p50_ms": 1000 * percentile(small, 50),
        "small_p99_ms": 1000 * percentile(small, 99),
        "small_max_ms": 1000 * max(small, default=float("nan")),
        "large_requests": len(big),
        "large_p50_ms": 1000 * percentile(big, 50),
        "tokens_per_s": (found["tokens_at_end"] - found["tokens_at_start"]) / seconds,
        "statuses": found["statuses"],
    }


def fairness(model: str | None, site: Path | None, seconds: float) -> dict:
    """The small-behind-large scenario and the mixed workload at 64 clients, on one server."""
    words = " ".join(wikitext_lines()).split()  # about 31,000: taken round in a circle
    large = [" ".join(words[(i * 400 + k) % len(words)] for k in range(400)) for i in range(256)]
    process, url = start_server(model, "--provider", "cpu", site=site)
    try:
        found = asyncio.run(small_behind_large(url, large, seconds, warmup=10.0))
        found["mixed_64"] = asyncio.run(
            closed_loop(url, 64, make_requests(mixed(wikitext_lines(), sts_sentences()), 100_000),
                        seconds / 2)
        )  # fmt: skip
    finally:
        found["exit_code"] = stop_server(process)
    return found


def client_session(url: str, clients: int) -> aiohttp.ClientSession:
    """aiohttp: its C HTTP parser keeps the load generator's share of the CPU small (httpx
    took 4 ms of CPU per request at 64 connections, a sixth of this 2-core machine)."""
    connector = aiohttp.TCPConnector(limit=clients)
    return aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(120))


def make_requests(texts: list[str], count: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [
        [texts[i] for i in rng.integers(0, len(texts), size=int(rng.integers(1, 17)))]
        for _ in range(count)
    ]


def bare_session_ms(embedder: Embedder, text: str, runs: int = 300) -> dict:
    """onnxruntime's run alone on TEXT's tokens, and Embedder.embed([TEXT]) whole."""
    (doc,) = embedder.pipeline.tokenize([text])
    inputs = pad_batch(doc, len(doc[0]))
    session = embedder.pipeline.session  # the bare session is what is being measured
    timings = {"session_run": [], "embedder_embed": []}
    for _ in range(runs):
        start = time.perf_counter()
        session.run(inputs, "sentence_embedding")
        timings["session_run"].append(time.perf_counter() - start)
        start = time.perf_counter()
        embedder.embed([text])
        timings["embedder_embed"].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in timings.items()}


def batch_companions(model: str | None, texts: list[str]) -> dict:
    """Each text's vector alone against the same text within one batch of all, per
    precision: how much a vector depends on what it is batched with."""
    found = {}
    for precision in ("int8", "fp32"):
        embedder = Embedder(model, provider="cpu", precision=precision)
        together = embedder.embed(texts)
        alone = np.concatenate([embedder.embed([t]) for t in texts])
        norms = np.linalg.norm(together, axis=1) * np.linalg.norm(alone, axis=1)
        cos = (together * alone).sum(1) / norms
        found[precision] = {
            "texts": len(texts),
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(together - alone).max()),
            "identical_rows": int((together == alone).all(1).sum()),
        }
    return found


async def memory_run(url: str, pid: int, total: int, clients: int = 16) -> dict:
    """TOTAL one-text requests; RSS after the first tenth and at the end."""
    samples = {}
    sent = {"n": 0}
    async with client_session(url, clients) as http:

        async def client() -> None:
            while sent["n"] < total:
                sent["n"] += 1
                if sent["n"] == total // 10:
                    samples["after_first_tenth"] = rss_mb(pid)
                async with http.post("/v1/embeddings", json={"input": [SHORT]}) as response:
                    response.raise_for_status()
                    await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    samples["end"] = rss_mb(pid)
    growth = samples["end"] / samples["after_first_tenth"] - 1
    return {"requests": total, "seconds": seconds, "rss_mb": samples, "growth": growth}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="model directory (default: shipped)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per level")
    parser.add_argument("--rss-requests", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--fairness-seconds", type=float, default=60.0)
    parser.add_argument(
        "--before-site",
        type=Path,
        default=None,
        help="an older albert-onnx (pip install --no-deps --target DIR)",
    )
    parser.add_argument("--before-label", default=None, help="what --before-site holds")
    parser.add_argument("--fairness-only", action="store_true")
    args = parser.parse_args()
    if args.before_site or args.fairness_only:
        write_fairness(args, args.out)
        if args.fairness_only:
            return
    pool = mixed(wikitext_lines(), sts_sentences(("test",)))
    requests = make_requests(pool, 100_000)
    embedder = Embedder(args.model, provider="cpu")
    embedder.embed(pool[:64])

    sample = [t for r in requests[:400] for t in r]
    offline = time_embedding(embedder, sample)
    report: dict = {
        "command": "python benchmarks/serve_load.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and k != "out"
        ),
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in
                     ("onnxruntime", "tokenizers", "numpy", "starlette", "uvicorn", "httpx")},
        "model": str(embedder.model_dir.name),
        "precision": embedder.precision,
        "offline_ceiling": {
            "texts": offline.docs, "tokens": offline.tokens, "seconds": offline.seconds,
            "texts_per_s": offline.docs_per_s, "tokens_per_s": offline.tokens_per_s,
        },
        "bare_ms": bare_session_ms(embedder, SHORT),
        "batch_companions": batch_companions(args.model, pool[:300]),
        "batching": [], "naive": [],
    }  # fmt: skip
    print(json.dumps({k: report[k] for k in ("offline_ceiling", "bare_ms", "batch_companions")}))

    workloads = {"mixed": requests, "single": [[t] for t in pool] * 30}
    for name, extra in (("batching", ()), ("naive", ("--isolate-requests",))):
        process, url = start_server(args.model, "--provider", "cpu", *extra)
        try:
            for workload, load in workloads.items():
                for clients in LEVELS:
                    row = asyncio.run(closed_loop(url, clients, load, args.seconds))
                    report[name].append({"workload": workload, **row})
                    print(name, json.dumps(report[name][-1]), flush=True)
            if name == "batching":
                single = asyncio.run(closed_loop(url, 1, [[SHORT]] * 5000, args.seconds / 2))
                report["single_short_text"] = single
                print("single", json.dumps(single), flush=True)
                report["memory"] = asyncio.run(memory_run(url, process.pid, args.rss_requests))
                print("memory", json.dumps(report["memory"]), flush=True)
        finally:
            report[f"{name}_exit_code"] = stop_server(process)
    write(report, args.out)


def targets(report: dict) -> str:
    """The issue's targets, each with the measured value and whether it is met."""
    ceiling = report["offline_ceiling"]["tokens_per_s"]
    at = {(r["workload"], r["clients"]): r for r in report["batching"]}
    naive = {(r["workload"], r["clients"]): r for r in report["naive"]}
    checks = []
    for workload in ("mixed", "single"):
        ours, theirs = at[(workload, 64)]["tokens_per_s"], naive[(workload, 64)]["tokens_per_s"]
        checks += [
            (f"{workload}, 64 clients: >= 0.85 x offline", ours / ceiling, ours / ceiling >= 0.85),
            (f"{workload}, 64 clients: >= 3 x naive", ours / theirs, ours / theirs >= 3),
        ]
    extra = report["single_short_text"]["p50_ms"] - report["bare_ms"]["session_run"]
    checks.append(("one short text: p50 within 3 ms of the bare session (ms over)", extra,
                   extra <= 3))  # fmt: skip
    growth = report["memory"]["growth"]
    checks.append(("RSS growth over the memory run < 5%", growth, growth < 0.05))
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {value:.3g} | {'yes' if ok else 'no'} |" for what, value, ok in checks]
    return "\n".join(lines)


def write_fairness(args: argparse.Namespace, out: Path) -> None:
    """Before (if asked) and after, alternating twice, into serve_fairness.{json,md}."""
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(2):  # interleaved: a drift in the machine's speed hits both alike
        for name, site in (("before", args.before_site), ("after", None)):
            if name == "before" and site is None:
                continue
            runs[name].append(fairness(args.model, site, args.fairness_seconds))
            print(name, json.dumps(runs[name][-1]), flush=True)
    before_version = args.before_label or (str(args.before_site) if args.before_site else None)
    report = {
        "command": "python benchmarks/serve_load.py --fairness-only"
        + (f" --before-site {args.before_site}" if args.before_site else "")
        + (f" --before-label '{args.before_label}'" if args.before_label else "")
        + f" --fairness-seconds {args.fairness_seconds:g}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in
                     ("onnxruntime", "tokenizers", "numpy", "starlette", "uvicorn", "h11")},
        "before": before_version,
        "runs": runs,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_fairness.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| server | run | small p50 ms | small p99 ms | small max ms | small requests | "
        "large p50 ms | tokens/s (both) | mixed, 64 clients: tokens/s | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        for i, r in enumerate(rows, 1):
            lines.append(
                f"| {name} | {i} | {r['small_p50_ms']:,.0f} | {r['small_p99_ms']:,.0f} | "
                f"{r['small_max_ms']:,.0f} | {r['small_requests']} | {r['large_p50_ms']:,.0f} | "
                f"{r['tokens_per_s']:,.0f} | {r['mixed_64']['tokens_per_s']:,.0f} | "
                f"{r['mixed_64']['p50_ms']:,.0f} |"
            )
    summary = ""
    if runs["before"]:

        def ratio(key: Callable[[dict], float]) -> float:
            """after / before, of the means over the runs"""
            after, before = (statistics.mean(key(r) for r in runs[n]) for n in ("after", "before"))
            return after / before

        summary = (
            f"\nAfter / before (means of the runs): total throughput under the mixed load "
            f"{ratio(lambda r: r['tokens_per_s']):.3f}x, the mixed workload at 64 clients "
            f"{ratio(lambda r: r['mixed_64']['tokens_per_s']):.3f}x; the small requests' p50 "
            f"{ratio(lambda r: r['small_p50_ms']):.3f}x, p99 "
            f"{ratio(lambda r: r['small_p99_ms']):.3f}x.\n"
        )
    machine = report["machine"]
    (out / "serve_fairness.md").write_text(
        f"# A small request behind a large one ({machine['cpu']}, {machine['threads']} "
        f"threads, flags {' '.join(machine['flags'])})\n\n"
        f"Command: `{report['command']}`  \n"
        f"Before: {before_version or '-'}; after: this checkout  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        "One client sends 256 texts of 400 words per request (127,790 tokens), another one "
        "short text per request, each its next request as soon as the last is answered, "
        f"{args.fairness_seconds:g} s measured after 10 s of warm-up; then 64 clients of the "
        "mixed workload (1-16 texts per request) on the same server. The shipped model, "
        "INT8, on the CPU. Tokens/s is the server's own count of tokens embedded in the "
        "measured time.\n\n" + "\n".join(lines) + "\n" + summary
    )
    print((out / "serve_fairness.md").read_text())


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    ceiling = report["offline_ceiling"]["tokens_per_s"]
    naive = {(row["workload"], row["clients"]): row for row in report["naive"]}
    lines = [
        "| workload | server | clients | texts/s | tokens/s | x offline | x naive | p50 ms | "
        "p95 ms | p99 ms | non-200 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(row, name) for name in ("batching", "naive") for row in report[name]]
    for row, name in sorted(rows, key=lambda rn: (rn[0]["workload"], rn[1], rn[0]["clients"])):
        other = naive.get((row["workload"], row["clients"]))
        ratio = None
        if name == "batching" and other and other["tokens_per_s"]:
            ratio = row["tokens_per_s"] / other["tokens_per_s"]
        errors = sum(n for code, n in row["statuses"].items() if code != "200")
        lines.append(
            f"| {row['workload']} | {name} | {row['clients']} | {row['texts_per_s']:,.0f} | "
            f"{row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / ceiling:.2f} | "
            f"{f'{ratio:.2f}' if ratio else '-'} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {errors} |"
        )
    single, bare, memory = report["single_short_text"], report["bare_ms"], report["memory"]
    int8, fp32 = report["batch_companions"]["int8"], report["batch_companions"]["fp32"]
    machine = report["machine"]
    (out / "serve_load.md").write_text(
        f"# Serving under load ({machine['cpu']}, {machine['threads']} threads, flags "
        f"{' '.join(machine['flags'])})\n\n"
        f"Command: `{report['command']}`  \n"
        f"Model: {report['model']} ({report['precision']} on the CPU)  \n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}\n\n"
        f"Offline ceiling (`Embedder.embed`, same texts, this process): "
        f"{report['offline_ceiling']['texts_per_s']:,.0f} texts/s, {ceiling:,.0f} tokens/s.\n\n"
        + "\n".join(lines)
        + "\n\n"
        f"One client, one short text: p50 {single['p50_ms']:.2f} ms, p99 "
        f"{single['p99_ms']:.2f} ms; the bare session run takes {bare['session_run']:.2f} ms "
        f"and `Embedder.embed` in process {bare['embedder_embed']:.2f} ms, so HTTP and the "
        f"queue add {single['p50_ms'] - bare['session_run']:.2f} ms.\n\n"
        f"Memory over {memory['requests']:,} requests: server RSS "
        f"{memory['rss_mb']['after_first_tenth']:.0f} MB after the first tenth, "
        f"{memory['rss_mb']['end']:.0f} MB at the end ({memory['growth']:+.1%}).\n\n"
        f"Batch companions: {int8['texts']} texts embedded alone and within one batch. "
        f"INT8: min cosine {int8['min_cosine']:.5f}, max |diff| {int8['max_abs_diff']:.1e}. "
        f"fp32: min cosine {fp32['min_cosine']:.7f}, max |diff| {fp32['max_abs_diff']:.1e}, "
        f"{fp32['identical_rows']} of {fp32['texts']} rows bit-identical."
        f"\n\nBoth servers exited with status {report['batching_exit_code']} and "
        f"{report['naive_exit_code']} after SIGTERM.\n\n" + targets(report) + "\n"
    )
    print((out / "serve_load.md").read_text())


if __name__ == "__main__":
    main()
