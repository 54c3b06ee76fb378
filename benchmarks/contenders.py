"""One benchmark contender per function, each run in its own process by compare.py.

    python benchmarks/contenders.py NAME --job job.json --out result.json

A contender gets the real-text corpus and a fixed-shape stress batch and returns, per corpus,
(seconds, real tokens, padded tokens) plus its sentence vectors of the real corpus, which
compare.py checks against PyTorch fp32. Each runs in a fresh process so that its peak RSS is
its own; the optimum and sentence-transformers contenders run in a separate virtualenv,
because optimum pins an older transformers than albert-onnx's export half uses.

Timing starts after the model is loaded and one warm-up batch has run; it includes
tokenization and pooling, which every contender must do to produce a sentence vector.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

NAIVE_BATCH = 32  # what the seed articles, optimum examples and fastembed use


def naive_batches(n: int) -> Iterator[list[int]]:
    """Batches of 32 in input order: how most hand-written workers batch."""
    for start in range(0, n, NAIVE_BATCH):
        yield list(range(start, min(n, start + NAIVE_BATCH)))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The runtime's mean pooling, restated: optimum's virtualenv has no albert_onnx."""
    weights = mask[..., None].astype(hidden.dtype)
    return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)


def run_naive(
    texts: list[str],
    stress_ids: np.ndarray,
    tokenize: Callable[[list[str]], dict[str, np.ndarray]],
    forward: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> dict:
    """Input-order batches of 32, padded to each batch's longest text, mean pooled."""
    forward(tokenize(texts[:NAIVE_BATCH]))  # warm-up
    vectors, real, padded = [], 0, 0
    start = time.perf_counter()
    for batch in naive_batches(len(texts)):
        inputs = tokenize([texts[i] for i in batch])
        real += int(inputs["attention_mask"].sum())
        padded += inputs["attention_mask"].size
        vectors.append(forward(inputs))
    corpus_seconds = time.perf_counter() - start
    stress = {
        "input_ids": stress_ids,
        "attention_mask": np.ones_like(stress_ids),
        "token_type_ids": np.zeros_like(stress_ids),
    }
    start = time.perf_counter()
    for batch in naive_batches(len(stress_ids)):
        forward({k: v[batch] for k, v in stress.items()})
    stress_seconds = time.perf_counter() - start
    return {
        "corpus": {"seconds": corpus_seconds, "real_tokens": real, "padded_tokens": padded},
        "stress": {
            "seconds": stress_seconds,
            "real_tokens": int(stress_ids.size),
            "padded_tokens": int(stress_ids.size),
        },
        "vectors": np.concatenate(vectors),
    }


def hf_tokenize(tokenizer_dir: str) -> Callable[[list[str]], dict[str, np.ndarray]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tokenize(batch: list[str]) -> dict[str, np.ndarray]:
        return dict(
            tokenizer(batch, padding=True, truncation=True, max_length=512, return_tensors="np")
        )

    return tokenize


def pytorch_fp32(job: dict) -> dict:
    """transformers AlbertModel, eager fp32: the seed articles' loop."""
    import torch
    from transformers import AlbertModel

    torch.set_num_threads(job["threads"])
    model = AlbertModel.from_pretrained(job["checkpoint"], add_pooling_layer=False).eval()

    def forward(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
            hidden = model(**tensors).last_hidden_state.numpy()
        return mean_pool(hidden, inputs["attention_mask"])

    return run_naive(job["texts"], job["stress_ids"], hf_tokenize(job["checkpoint"]), forward)


def _optimum(job: dict, variant: str) -> dict:
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    model = ORTModelForFeatureExtraction.from_pretrained(
        job["optimum_dirs"][variant],
        file_name=job["optimum_files"][variant],
        provider="CPUExecutionProvider",
        session_options=_session_options(job["threads"]),
    )

    def forward(inputs: dict[str, np.ndarray]) -> np.ndarray:
        hidden = model(**inputs).last_hidden_state
        return mean_pool(np.asarray(hidden), inputs["attention_mask"])

    return run_naive(job["texts"], job["stress_ids"], hf_tokenize(job["checkpoint"]), forward)


def optimum_fp32(job: dict) -> dict:
    """optimum's default export, as ORTModelForFeatureExtraction loads it."""
    return _optimum(job, "fp32")


def optimum_o2(job: dict) -> dict:
    """optimum's O2 graph optimization (fused attention, LayerNorm and GELU)."""
    return _optimum(job, "o2")


def optimum_int8(job: dict) -> dict:
    """optimum's dynamic INT8 quantization (AutoQuantizationConfig for this CPU)."""
    return _optimum(job, "int8")


def sentence_transformers_onnx(job: dict) -> dict:
    """sentence-transformers' ONNX backend; its encode() sorts texts by length itself."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        job["checkpoint"],
        backend="onnx",
        device="cpu",
        model_kwargs={
            "provider": "CPUExecutionProvider",
            "session_options": _session_options(job["threads"]),
        },
    )
    model.encode(job["texts"][:NAIVE_BATCH], batch_size=NAIVE_BATCH)
    start = time.perf_counter()
    vectors = model.encode(job["texts"], batch_size=NAIVE_BATCH)
    seconds = time.perf_counter() - start
    real = sum(len(ids) for ids in model.tokenizer(job["texts"], truncation=True)["input_ids"])
    return {
        "corpus": {"seconds": seconds, "real_tokens": real, "padded_tokens": None},
        "vectors": np.asarray(vectors),
    }


def naive_ort_fp32(job: dict) -> dict:
    """Our own fp32 graph with input-order batches: the fastembed way of batching."""
    import onnxruntime
    from tokenizers import Tokenizer

    session = onnxruntime.InferenceSession(
        str(Path(job["model_dir"]) / "model.onnx"),
        _session_options(job["threads"]),
        providers=["CPUExecutionProvider"],
    )
    tokenizer = Tokenizer.from_file(str(Path(job["model_dir"]) / "tokenizer.json"))
    tokenizer.enable_truncation(512)
    tokenizer.enable_padding()

    def tokenize(batch: list[str]) -> dict[str, np.ndarray]:
        encodings = tokenizer.encode_batch(batch)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def forward(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["sentence_embedding"], inputs)[0]

    return run_naive(job["texts"], job["stress_ids"], tokenize, forward)


def _albert_onnx(job: dict, precision: str) -> dict:
    """`embed_corpus`: JSONL in, .npy out, tokenization, bucketing and writing included."""
    from albert_onnx.runtime.embedder import Embedder
    from albert_onnx.runtime.job import embed_corpus
    from albert_onnx.runtime.pipeline.tokenizer import Encoded

    embedder = Embedder(
        job["model_dir"], provider="cpu", precision=precision, threads=job["threads"]
    )
    embedder.embed(job["texts"][:NAIVE_BATCH])  # warm-up, as for the others
    output = Path(job["work"]) / f"{job['name']}.npy"
    stats = embed_corpus(embedder, Path(job["corpus_jsonl"]), output).stats
    result = {
        "corpus": {
            "seconds": stats.seconds,
            "real_tokens": stats.tokens,
            "padded_tokens": stats.padded_tokens,
        },
        "vectors": np.load(output),
    }
    stress = [
        [Encoded(row.astype(np.int32), np.zeros(len(row), np.int32))] for row in job["stress_ids"]
    ]
    start = time.perf_counter()
    embedder.pipeline.embed_docs(stress)
    result["stress"] = {
        "seconds": time.perf_counter() - start,
        "real_tokens": int(job["stress_ids"].size),
        "padded_tokens": int(job["stress_ids"].size),
    }
    return result


def albert_onnx_auto(job: dict) -> dict:
    """albert-onnx with the variant `auto` picks on this machine (INT8 on a CPU)."""
    return _albert_onnx(job, "auto")


def albert_onnx_fp32(job: dict) -> dict:
    return _albert_onnx(job, "fp32")


def _session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return options


CONTENDERS: dict[str, Callable[[dict], dict]] = {
    "pytorch-fp32": pytorch_fp32,
    "optimum-fp32": optimum_fp32,
    "optimum-o2": optimum_o2,
    "optimum-int8": optimum_int8,
    "st-onnx-fp32": sentence_transformers_onnx,
    "naive-ort-fp32": naive_ort_fp32,
    "albert-onnx-fp32": albert_onnx_fp32,
    "albert-onnx-auto": albert_onnx_auto,
}


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM). Unlike ru_maxrss it is not inherited from the
    parent across fork + exec, so each contender's figure is its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--job", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    job = json.loads(args.job.read_text())
    job["name"] = args.name
    lines = Path(job["corpus_jsonl"]).read_text(encoding="utf-8").splitlines()
    job["texts"] = [json.loads(line)["text"] for line in lines]
    job["stress_ids"] = np.load(job["stress_npy"]).astype(np.int64)
    result = CONTENDERS[args.name](job)
    np.save(args.out.with_suffix(".npy"), result.pop("vectors").astype(np.float32))
    result["peak_rss_mb"] = peak_rss_mb()
    args.out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
