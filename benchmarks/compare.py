"""Every contender on the same model, corpora and machine, in one run; JSON + Markdown + PNG.

    python benchmarks/compare.py [--out benchmarks/results] [--optimum-python PY]
                                 [--runtime-model NAME=DIR ...]

Model: the albert-base-v2 shape (E=128, H=768, 12 layers sharing one), random weights with
the real tokenizer. Corpora: (a) real text of mixed lengths (WikiText-2 paragraphs and
headings interleaved with STS-B sentences), (b) a fixed 256 x 128 stress batch of real
token ids. Contenders are in contenders.py; each runs in its own process, one after
another, and is compared with PyTorch eager fp32 from the same run: its speed ratio, and
the cosine of its vectors to PyTorch's (a speed-up must never hide a wrong answer).

--optimum-python is a Python whose environment has optimum-onnx and sentence-transformers
(they pin transformers < 4.58); without it those contenders are skipped and say so.
--runtime-model adds runs of albert-onnx on other model directories (int8 and fp32), e.g.
the shipped default model beside its teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from corpora import mixed, sts_sentences, wikitext_lines, write_jsonl
from machine import cpu_description
from random_albert import SHAPES, build

from albert_onnx.export.exporter import export_model
from albert_onnx.runtime.pipeline.pooling import l2_normalize
from albert_onnx.runtime.pipeline.providers import cpu_threads
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer
from albert_onnx.runtime.stats import Stats

HERE = Path(__file__).resolve().parent
OPTIMUM_CONTENDERS = ("optimum-fp32", "optimum-o2", "optimum-int8", "st-onnx-fp32")
ORDER = (
    "pytorch-fp32",
    *OPTIMUM_CONTENDERS,
    "naive-ort-fp32",
    "albert-onnx-fp32",
    "albert-onnx-auto",
)
STRESS_SHAPE = (256, 128)
VERSIONS = ("onnxruntime", "tokenizers", "numpy", "torch", "transformers")
OPTIMUM_VERSIONS = (
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "transformers",
    "sentence-transformers",
    "torch",
)


def stress_ids(model_dir: Path, texts: list[str]) -> np.ndarray:
    """256 rows of exactly 128 real token ids ([CLS] ... [SEP]) from the long texts."""
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", STRESS_SHAPE[1])
    rows = [e.ids for e in tokenizer.encode(texts) if len(e) == STRESS_SHAPE[1]]
    return np.stack([rows[i % len(rows)] for i in range(STRESS_SHAPE[0])]).astype(np.int64)


def prepare_optimum(python: str, checkpoint: Path, work: Path) -> dict:
    """optimum's own export, O2 optimization and INT8 quantization, in its environment."""
    script = f"""
import json, sys
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig
work = {str(work)!r}
model = ORTModelForFeatureExtraction.from_pretrained({str(checkpoint)!r}, export=True)
model.save_pretrained(work + "/optimum-fp32")
ORTOptimizer.from_pretrained(model).optimize(AutoOptimizationConfig.O2(), work + "/optimum-o2")
flags = open("/proc/cpuinfo").read()
config = (AutoQuantizationConfig.avx512_vnni if "avx512_vnni" in flags else
          AutoQuantizationConfig.avx2)(is_static=False, per_channel=False)
ORTQuantizer.from_pretrained(model).quantize(config, work + "/optimum-int8")
"""
    subprocess.run([python, "-c", script], check=True)
    dirs = {v: str(work / f"optimum-{v}") for v in ("fp32", "o2", "int8")}
    files = {v: next(p.name for p in Path(d).glob("*.onnx")) for v, d in dirs.items()}
    return {"optimum_dirs": dirs, "optimum_files": files}


def run_contender(name: str, python: str, job_file: Path, work: Path) -> dict:
    out = work / f"{name}.json"
    start = time.perf_counter()
    subprocess.run(
        [python, str(HERE / "contenders.py"), name, "--job", str(job_file), "--out", str(out)],
        check=True,
    )
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - start
    result["vectors_file"] = str(out.with_suffix(".npy"))
    return result


def cosines(vectors: np.ndarray, reference: np.ndarray) -> dict:
    c = (l2_normalize(vectors) * l2_normalize(reference)).sum(1)
    return {"min": float(c.min()), "mean": float(c.mean())}


def summarize(name: str, result: dict, baseline: dict | None) -> dict:
    row = {"contender": name, "peak_rss_mb": result["peak_rss_mb"]}
    for corpus in ("corpus", "stress"):
        if corpus not in result:
            continue
        c = result[corpus]
        stats = Stats(
            tokens=c["real_tokens"], padded_tokens=c["padded_tokens"], seconds=c["seconds"]
        )
        row[corpus] = {
            "seconds": c["seconds"],
            "real_tokens": c["real_tokens"],
            "real_tokens_per_s": stats.tokens_per_s,
            "padding_overhead": stats.padding_overhead if c["padded_tokens"] else None,
        }
        if baseline and corpus in baseline:
            base = baseline[corpus]
            row[corpus]["x_pytorch"] = (
                stats.tokens_per_s
                / Stats(tokens=base["real_tokens"], seconds=base["seconds"]).tokens_per_s
            )
    if baseline:
        row["cosine_vs_pytorch"] = cosines(
            np.load(result["vectors_file"]), np.load(baseline["vectors_file"])
        )
    return row


def cold_start(python: str, model_dir: Path, checkpoint: Path) -> list[dict]:
    """A fresh worker: import, load, first vector. albert-onnx INT8 beside torch+transformers."""
    probes = {
        "albert-onnx int8": (
            "from albert_onnx import Embedder;"
            f"e = Embedder({str(model_dir)!r}, provider='cpu', precision='int8');"
            "e.embed(['The first request after start-up.'])"
        ),
        "torch + transformers fp32": (
            "import torch; from transformers import AlbertModel, AutoTokenizer;"
            f"t = AutoTokenizer.from_pretrained({str(checkpoint)!r});"
            f"m = AlbertModel.from_pretrained({str(checkpoint)!r}).eval();"
            "m(**t(['The first request after start-up.'], return_tensors='pt'))"
        ),
    }
    rows = []
    for name, code in probes.items():
        script = f"{code}\nfrom contenders import peak_rss_mb\nprint(peak_rss_mb())"
        start = time.perf_counter()
        out = subprocess.run(
            [python, "-c", script],
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(HERE)),
        )
        rows.append(
            {
                "worker": name,
                "seconds": time.perf_counter() - start,
                "peak_rss_mb": float(out.stdout.split()[-1]),
            }
        )
    return rows


def versions(python: str, names: tuple[str, ...]) -> dict:
    script = (
        "import json; from importlib import metadata as m\n"
        f"v = {{}}\nfor d in {names!r}:\n    try: v[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\nprint(json.dumps(v))"
    )
    return json.loads(
        subprocess.run([python, "-c", script], check=True, capture_output=True, text=True).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="cpu_compare", help="results file stem")
    parser.add_argument("--optimum-python", default=None)
    parser.add_argument("--runtime-model", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--texts", type=int, default=400, help="real-text corpus size")
    parser.add_argument("--shape", default="base", help="model shape (small: a quick check)")
    parser.add_argument(
        "--cold-start-only",
        action="store_true",
        help="re-measure only the cold start and update the existing results file",
    )
    args = parser.parse_args()
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="albert-onnx-bench."))
    checkpoint = build(work / "ckpt", args.shape)
    model_dir = work / "albert-base-shape"
    export_model(str(checkpoint), model_dir, quantize=True)
    if args.cold_start_only:
        report = json.loads((args.out / f"{args.name}.json").read_text())
        report["cold_start"] = cold_start(sys.executable, model_dir, checkpoint)
        report["cold_start_command"] = command
        write_report(report, args.out, args.name)
        return

    long_texts = wikitext_lines()
    texts = mixed(long_texts, sts_sentences(("test",)))[: args.texts]
    job = {
        "checkpoint": str(checkpoint),
        "model_dir": str(model_dir),
        "work": str(work),
        "threads": cpu_threads(),
        "corpus_jsonl": str(write_jsonl(work / "corpus.jsonl", texts)),
    }
    np.save(work / "stress.npy", stress_ids(model_dir, long_texts))
    job["stress_npy"] = str(work / "stress.npy")
    contenders = [c for c in ORDER if c not in OPTIMUM_CONTENDERS or args.optimum_python]
    if args.optimum_python:
        job.update(prepare_optimum(args.optimum_python, checkpoint, work))
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))

    results: dict[str, dict] = {}
    for name in contenders:
        python = args.optimum_python if name in OPTIMUM_CONTENDERS else sys.executable
        results[name] = run_contender(name, python, job_file, work)
        print(
            name,
            json.dumps({k: v for k, v in results[name].items() if k != "vectors_file"}),
            flush=True,
        )
    baseline = results["pytorch-fp32"]
    rows = [summarize(name, results[name], baseline) for name in contenders]

    extra_rows = []
    for spec in args.runtime_model:
        label, directory = spec.split("=", 1)
        extra_file = work / f"job-{label}.json"
        extra_file.write_text(json.dumps(dict(job, model_dir=directory, work=str(work / label))))
        (work / label).mkdir()
        for name in ("albert-onnx-fp32", "albert-onnx-auto"):
            result = run_contender(name, sys.executable, extra_file, work / label)
            extra_rows.append(dict(summarize(name, result, None), model=label))

    report = {
        "command": command,
        "machine": cpu_description(),
        "versions": versions(sys.executable, VERSIONS),
        "optimum_versions": versions(args.optimum_python, OPTIMUM_VERSIONS)
        if args.optimum_python
        else None,
        "model": f"albert {args.shape} shape ({SHAPES[args.shape]}), one shared layer, "
        "random weights, real albert-base-v2 tokenizer",
        "corpus": f"{len(texts)} real texts: WikiText-2 test paragraphs and headings "
        "interleaved with STS-B test sentences",
        "stress": f"{STRESS_SHAPE[0]} x {STRESS_SHAPE[1]} real token ids, batches of 32 "
        "(albert-onnx: its own token budget)",
        "rows": rows,
        "runtime_models": extra_rows,
        "cold_start": cold_start(sys.executable, model_dir, checkpoint),
    }
    write_report(report, args.out, args.name)


def write_report(report: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    chart(report, out / f"{name}.png")
    print(markdown(report))


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# CPU comparison: {m['cpu']} ({m['threads']} threads, flags {' '.join(m['flags'])})",
        "",
        f"Command: `{report['command']}`  ",
        f"Model: {report['model']}  ",
        f"Corpus (a): {report['corpus']}  ",
        f"Corpus (b): {report['stress']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
    ]
    if report["optimum_versions"]:
        lines.append(
            "optimum environment: "
            + ", ".join(f"{k} {v}" for k, v in report["optimum_versions"].items())
        )
    lines += [
        "",
        "| contender | real text tokens/s | x PyTorch | docs/s | padding | 256x128 tokens/s "
        "| x PyTorch | peak RSS MB | cosine vs PyTorch (min / mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    docs = int(report["corpus"].split()[0])
    for r in report["rows"]:
        c, s = r["corpus"], r.get("stress", {})
        cos = r.get("cosine_vs_pytorch", {})
        lines.append(
            f"| {r['contender']} | {c['real_tokens_per_s']:,.0f} | {c.get('x_pytorch', 1):.2f} | "
            f"{docs / c['seconds']:.1f} | {_fmt(c['padding_overhead'], '.1%', 'sorted inside')} | "
            f"{_fmt(s.get('real_tokens_per_s'), ',.0f')} | {_fmt(s.get('x_pytorch'), '.2f')} | "
            f"{r['peak_rss_mb']:.0f} | {cos.get('min', 1):.5f} / {cos.get('mean', 1):.5f} |"
        )
    if report["runtime_models"]:
        lines += [
            "",
            "Other models through the albert-onnx runtime (same corpus):",
            "",
            "| model | variant | real text tokens/s | docs/s | 256x128 tokens/s | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["runtime_models"]:
            lines.append(
                f"| {r['model']} | {r['contender']} | {r['corpus']['real_tokens_per_s']:,.0f} | "
                f"{docs / r['corpus']['seconds']:.1f} | {r['stress']['real_tokens_per_s']:,.0f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "Cold start (fresh process: import, load, first vector)"
        + (
            f", re-measured by `{report['cold_start_command']}`"
            if "cold_start_command" in report
            else ""
        )
        + ":",
        "",
        "| worker | seconds | peak RSS MB |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['worker']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |"
        for r in report["cold_start"]
    ]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["contender"] for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    for ax, corpus, title in (
        (axes[0], "corpus", "real text, end to end"),
        (axes[1], "stress", "256 x 128 stress batch"),
    ):
        values = [r.get(corpus, {}).get("real_tokens_per_s", 0) for r in rows]
        ax.barh(
            y,
            values,
            color=["#d62728" if n.startswith("albert-onnx") else "#7f7f7f" for n in names],
        )
        ax.set_title(title)
        ax.set_xlabel("real tokens / s")
        for i, v in enumerate(values):
            if v:
                ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"albert-base-v2 shape on {report['machine']['cpu']}, "
        f"{report['machine']['threads']} threads",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
