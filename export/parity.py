"""Parity proof at export time: PyTorch and each ONNX variant on the same padded probes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from albert_onnx.export.graph import PooledAlbert
from albert_onnx.runtime.pipeline.bucketer import pad_batch
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

SENTENCES = [
    "ALBERT shares one transformer layer across the whole stack.",
    "Factorized embeddings keep the vocabulary table small.",
    "A cat sat on the mat; naïve café owners paid £5 (approx.) in 2002, didn't they?",
    "ALBERT在各层之间共享参数，模型更小。",
    "Length sorting matters more than any single kernel.",
]
PROBE_WORDS = [1, 4, 12, 30, 70, 130, 200, 10_000]  # the last one is truncated


def probe_texts() -> list[str]:
    """Texts from a few words to far past max_length, so padding and truncation are covered."""
    words = " ".join(SENTENCES).split()
    return [" ".join(words[i % len(words)] for i in range(n)) for n in PROBE_WORDS]


class ParityProbe:
    """Runs the probes through PyTorch once, then compares any ONNX graph against that.

    PyTorch also runs them in float64, so that the fp32 gate can tell an export error from
    the model's own fp32 rounding: a trained model with a shared layer applied many times can
    amplify rounding far past 1e-4, in PyTorch as much as in onnxruntime.
    """

    def __init__(self, model: PooledAlbert, tokenizer: TextTokenizer) -> None:
        encoded = tokenizer.encode(probe_texts())
        self.inputs = pad_batch(encoded, max(len(e) for e in encoded))
        tensors = [
            torch.from_numpy(self.inputs[k])
            for k in ("input_ids", "attention_mask", "token_type_ids")
        ]
        with torch.no_grad():
            hidden, pooled = model(*tensors)
            hidden64, _ = copy.deepcopy(model).double()(*tensors)
        self.hidden, self.pooled = hidden.numpy(), pooled.numpy()
        valid = self.inputs["attention_mask"].astype(bool)
        self.torch_fp32_error = float(np.abs(self.hidden - hidden64.numpy())[valid].max())
        self.lengths = [len(e) for e in encoded]

    def measure(self, graph: Path) -> dict[str, Any]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        hidden, pooled = session.run(["last_hidden_state", "sentence_embedding"], self.inputs)
        valid = self.inputs["attention_mask"].astype(bool)
        cosine = (pooled * self.pooled).sum(1) / (
            np.linalg.norm(pooled, axis=1) * np.linalg.norm(self.pooled, axis=1)
        )
        return {
            "max_abs_diff_last_hidden_state": float(np.abs(hidden - self.hidden)[valid].max()),
            "min_cosine_sentence_embedding": float(cosine.min()),
            "pytorch_fp32_vs_fp64_max_abs_diff": self.torch_fp32_error,
            "probe_lengths": self.lengths,
            "provider": "CPUExecutionProvider",
        }
