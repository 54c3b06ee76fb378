"""CUDA check on a GPU machine: export an albert-base-v2-shaped model, prove the fp16 and
fp32 graphs right on the CUDA provider, and time the fixed-shape and end-to-end paths.

    python benchmarks/gpu_smoke.py --out results/   # needs torch + onnxruntime-gpu + CUDA

Random weights (no pretrained ALBERT can be downloaded here); real tokenizer and real text
from tests/data. Writes gpu_smoke.json to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from corpora import sts_sentences, wikitext_lines, write_jsonl
from random_albert import build
from transformers import AlbertModel

from albert_onnx import Embedder
from albert_onnx.export.exporter import export_model
from albert_onnx.export.graph import pool
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.session import ModelSession


def random_batch(batch: int, length: int, rng) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 30000, (batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, int(rng.integers(2, length + 1)) :] = 0
    ids[:, 0] = 2
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def cuda_parity(model_dir: Path, reference: torch.nn.Module) -> dict:
    rng = np.random.default_rng(0)
    results = {}
    for variant in ("fp32", "fp16"):
        session = ModelSession(
            model_dir
            / json.loads((model_dir / "albert_onnx.json").read_text())["variants"][variant]["file"],
            "cuda",
            1,
        )
        worst_cos, worst_diff = 1.0, 0.0
        for batch in range(1, 9):
            for length in (5, 64, 300):
                inputs = random_batch(batch, length, rng)
                pooled = session.run(inputs, "sentence_embedding")
                hidden = session.run(inputs, "last_hidden_state")
                with torch.no_grad():
                    t = {k: torch.from_numpy(v).cuda() for k, v in inputs.items()}
                    ref_h = reference(**t).last_hidden_state
                    ref_p = pool(ref_h, t["attention_mask"], "mean").cpu().numpy()
                valid = inputs["attention_mask"].astype(bool)
                worst_diff = max(
                    worst_diff, float(np.abs(hidden - ref_h.cpu().numpy())[valid].max())
                )
                cos = (
                    (pooled * ref_p).sum(1)
                    / np.linalg.norm(pooled, axis=1)
                    / np.linalg.norm(ref_p, axis=1)
                )
                worst_cos = min(worst_cos, float(cos.min()))
        results[variant] = {
            "max_abs_diff_last_hidden_state": worst_diff,
            "min_cosine_pooled": worst_cos,
            "batches": "1..8 x {5,64,300}",
        }
    return results


def fixed_shape_tokens_per_s(graph: Path, seconds: float = 5.0) -> float:
    session = ModelSession(graph, "cuda", 1)
    ids = np.random.default_rng(1).integers(5, 30000, (256, 128)).astype(np.int64)
    inputs = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    for _ in range(5):
        session.run(inputs, "sentence_embedding")
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(inputs, "sentence_embedding")
        runs += 1
    return runs * ids.size / (time.perf_counter() - start)


def attention_op_variant(fp32: Path, destination: Path) -> Path:
    """The packed Attention op (un-shares weights) for comparison with MultiHeadAttention."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(fp32), model_type="bert", num_heads=12, hidden_size=768, opt_level=0, use_gpu=True
    )
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(destination))
    return destination


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=3)
    args = parser.parse_args()
    import onnxruntime

    onnxruntime.preload_dlls()
    work = Path(tempfile.mkdtemp())
    checkpoint = build(work / "ckpt", "base")
    model_dir = work / "albert-base-shape"
    start = time.perf_counter()
    manifest = export_model(str(checkpoint), model_dir, quantize=True, fp16=True)
    report: dict = {
        "export_seconds": time.perf_counter() - start,
        "sizes_mb": {k: v.bytes / 1e6 for k, v in manifest.variants.items()},
        "export_parity": {k: v.parity for k, v in manifest.variants.items()},
        "fused": manifest.variants["fp16"].fused_operators,
    }
    reference = AlbertModel.from_pretrained(checkpoint, attn_implementation="eager").cuda().eval()
    report["cuda_parity"] = cuda_parity(model_dir, reference)

    embedder = Embedder(model_dir)
    report["auto_choice"] = [embedder.provider, embedder.precision]
    texts = (wikitext_lines() + sts_sentences(("train", "dev", "test"))) * args.copies
    corpus = write_jsonl(work / "corpus.jsonl", texts)
    docs = len(texts)
    embed_corpus(embedder, corpus, work / "warm.npy", window_texts=4096)  # warm-up, same shapes
    stats = embed_corpus(embedder, corpus, work / "v.npy", id_field="id").stats
    report["end_to_end"] = {
        "docs": docs,
        "real_tokens": stats.tokens,
        "seconds": stats.seconds,
        "real_tokens_per_s": stats.tokens_per_s,
        "docs_per_s": stats.docs_per_s,
        "padding_overhead": stats.padding_overhead,
    }
    gpu = np.load(work / "v.npy")[:2000]
    cpu = Embedder(model_dir, provider="cpu", precision="fp32").embed(texts[:2000])
    cos = (gpu * cpu).sum(1) / np.linalg.norm(gpu, axis=1) / np.linalg.norm(cpu, axis=1)
    report["end_to_end"]["min_cosine_vs_cpu_fp32"] = float(cos.min())

    report["fixed_256x128_tokens_per_s"] = {
        "fp16_multihead_attention": fixed_shape_tokens_per_s(model_dir / "model.fp16.onnx"),
        "fp16_packed_attention": fixed_shape_tokens_per_s(
            attention_op_variant(model_dir / "model.onnx", work / "attention.fp16.onnx")
        ),
        "fp32": fixed_shape_tokens_per_s(model_dir / "model.onnx"),
    }
    report["machine"] = {
        "gpu": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        **{
            d: metadata.version(d)
            for d in ("onnxruntime-gpu", "torch", "transformers", "tokenizers")
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
