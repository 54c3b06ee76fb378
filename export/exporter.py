"""`albert-onnx export`: checkpoint -> self-contained model directory with a parity proof.

Everything is built in a temporary sibling directory and renamed into place at the end,
so a failed export (for example a parity failure) never leaves a half-written model.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from albert_onnx.errors import ExportError
from albert_onnx.export.checkpoint import Checkpoint, resolve_checkpoint
from albert_onnx.export.graph import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    PooledAlbert,
    export_onnx,
    load_albert,
)
from albert_onnx.export.optimize import (
    inline_initializer_identities,
    optimize_fp16,
    put_residual_second,
    quantize_int8,
)
from albert_onnx.export.parity import ParityProbe
from albert_onnx.export.tokenizer_files import write_tokenizer
from albert_onnx.runtime.io.files import overlap
from albert_onnx.runtime.model.manifest import (
    MANIFEST_NAME,
    POOLING_MODES,
    VARIANT_FILES,
    Manifest,
    Variant,
    sha256_of,
)
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

FP32_MAX_ABS_DIFF = 1e-4
FP32_OWN_ERROR_FACTOR = 2.0  # x PyTorch's own fp32-vs-float64 error on the same probes
MIN_POOLED_COSINE = 0.99
OPSET = 17
TOOLS = ("albert-onnx", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu",
         "tokenizers")  # fmt: skip

TOKENIZER_FILE, WORDS_FILE, PROJECTION_FILE = (
    "tokenizer.json", "word_embeddings.npy", "embedding_projection.npz"
)  # fmt: skip
# what an export writes, and all that --force may replace
WRITTEN = frozenset({MANIFEST_NAME, *VARIANT_FILES.values(), TOKENIZER_FILE, WORDS_FILE,
                     PROJECTION_FILE})  # fmt: skip

Log = Callable[[str], None]


def export_model(
    model: str,
    output: Path,
    *,
    quantize: bool = False,
    fp16: bool = False,
    keep_fp32: bool = True,
    force: bool = False,
    pooling: str | None = None,
    normalize: bool | None = None,
    revision: str | None = None,
    log: Log = lambda _: None,
) -> Manifest:
    """Export MODEL (directory or hub id) to OUTPUT; returns the manifest it wrote.

    With keep_fp32=False the fp32 graph is still built and parity-checked (the others are
    derived from it) but left out of OUTPUT: a smaller directory to ship.
    """
    output = Path(output)
    if not keep_fp32 and not (quantize or fp16):
        raise ExportError("leaving out fp32 needs --quantize or --fp16: nothing would be left")
    if Path(model).expanduser().exists():  # a hub id is checked once it is downloaded
        _refuse_overlap(output, Path(model).expanduser())
    occupied = output.is_file() or (output.is_dir() and any(output.iterdir()))
    if occupied and not force:
        raise ExportError(f"{output} already exists and is not empty; pass --force to replace it")
    if occupied:
        _refuse_foreign(output)
    checkpoint = resolve_checkpoint(model, revision)
    _refuse_overlap(output, checkpoint.root)
    pooling = pooling or checkpoint.pooling or "mean"
    if pooling not in POOLING_MODES:
        raise ExportError(f"unknown pooling {pooling!r} (one of {', '.join(POOLING_MODES)})")
    normalize = normalize if normalize is not None else bool(checkpoint.normalize)

    output.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the directory is renamed into place and keeps the usual umask mode
    staging = output.parent / f".{output.name}.{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        manifest = _build(checkpoint, staging, quantize, fp16, keep_fp32, pooling, normalize, log)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _refuse_foreign(output: Path) -> None:
    """--force replaces a model directory an export wrote, and nothing else: not a file, not
    a directory without a manifest, not one holding anything an export does not write."""
    if not output.is_dir():
        raise ExportError(
            f"{output} is a file, not a model directory; --force replaces only a model "
            "directory an export wrote: remove it yourself or choose another output"
        )
    if not (output / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{output} is not an albert-onnx model directory (it has no {MANIFEST_NAME}); "
            "--force replaces only a model directory an export wrote: choose another output"
        )
    foreign = sorted(p.name for p in output.iterdir() if p.name not in WRITTEN or not p.is_file())
    if foreign:
        raise ExportError(
            f"{output} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
            "which an export does not write; --force replaces only what an export wrote: "
            "move it out or choose another output"
        )


def _refuse_overlap(output: Path, source: Path) -> None:
    """--force replaces OUTPUT: it may not be the checkpoint, nor hold it, nor lie inside it."""
    if overlap(output, source):
        raise ExportError(
            f"{output} overlaps the checkpoint being exported ({source}); choose an output "
            "outside it"
        )


def _build(
    checkpoint: Checkpoint,
    staging: Path,
    quantize: bool,
    fp16: bool,
    keep_fp32: bool,
    pooling: str,
    normalize: bool,
    log: Log,
) -> Manifest:
    config = checkpoint.config
    log("tokenizer")
    tokenizer_record = write_tokenizer(
        checkpoint.tokenizer_dir,
        config["vocab_size"],
        config["max_position_embeddings"],
        staging / TOKENIZER_FILE,
    )
    tokenizer_record["sha256"] = sha256_of(staging / TOKENIZER_FILE)
    albert = load_albert(checkpoint.model_dir)
    model = PooledAlbert(albert, pooling).eval()

    log("fp32 graph")
    fp32_path = staging / VARIANT_FILES["fp32"]
    export_onnx(model, fp32_path, OPSET)
    graph = onnx.load(fp32_path)
    inline_initializer_identities(graph)
    put_residual_second(graph)
    onnx.save(graph, fp32_path)

    graphs = {"fp32": fp32_path}
    fused: dict[str, dict[str, int]] = {"fp32": {}, "int8": {}}
    if quantize:
        log("int8 graph")
        graphs["int8"] = staging / VARIANT_FILES["int8"]
        quantize_int8(fp32_path, graphs["int8"])
    if fp16:
        log("fp16 graph")
        graphs["fp16"] = staging / VARIANT_FILES["fp16"]
        fused["fp16"] = optimize_fp16(
            fp32_path,
            graphs["fp16"],
            num_heads=config["num_attention_heads"],
            hidden_size=config["hidden_size"],
            layers=config["num_hidden_layers"],
            gelu="gelu" in str(config.get("hidden_act", "")),
        )

    log("parity")
    probe = ParityProbe(
        model, TextTokenizer(staging / TOKENIZER_FILE, tokenizer_record["max_length"])
    )
    variants = {}
    for name, path in graphs.items():
        parity = probe.measure(path)
        _check_parity(name, parity)
        variants[name] = _describe(path, name, parity, fused.get(name, {}))
    if not keep_fp32:
        fp32_path.unlink()
        del variants["fp32"]

    log("word embeddings")
    word_embeddings = _write_word_embeddings(albert, staging)
    return _write_manifest(
        staging, checkpoint, tokenizer_record, pooling, normalize, variants, word_embeddings
    )


def _check_parity(name: str, parity: dict) -> None:
    diff, cosine = parity["max_abs_diff_last_hidden_state"], parity["min_cosine_sentence_embedding"]
    # fp32 ONNX must be as close to PyTorch as PyTorch's own fp32 is to float64, and never
    # looser than 1e-4 unless the model itself rounds that much.
    limit = max(
        FP32_MAX_ABS_DIFF, FP32_OWN_ERROR_FACTOR * parity["pytorch_fp32_vs_fp64_max_abs_diff"]
    )
    if name == "fp32" and not diff <= limit:
        raise ExportError(
            f"parity failed: fp32 ONNX differs from PyTorch by {diff:.2e} (limit {limit:.1e}: "
            f"1e-4, or twice PyTorch's own fp32 error against float64)"
        )
    if not cosine >= MIN_POOLED_COSINE:
        raise ExportError(
            f"parity failed: {name} pooled embeddings reach cosine {cosine:.4f} "
            f"against PyTorch (limit {MIN_POOLED_COSINE})"
        )


def _describe(path: Path, name: str, parity: dict, fused: dict[str, int]) -> Variant:
    graph = onnx.load(path, load_external_data=False)

    def io(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    inputs, outputs = io(graph.graph.input), io(graph.graph.output)
    if [i["name"] for i in inputs] != INPUT_NAMES or [o["name"] for o in outputs] != OUTPUT_NAMES:
        raise ExportError(f"{path.name}: unexpected graph inputs/outputs after optimization")
    return Variant(
        file=path.name,
        sha256=sha256_of(path),
        bytes=path.stat().st_size,
        opset=max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        precision=name,
        inputs=inputs,
        outputs=outputs,
        parity=parity,
        fused_operators=fused,
    )


def _write_word_embeddings(albert, staging: Path) -> dict[str, str]:
    """The V x E table, and the E -> H projection that maps it into the encoder's space."""
    table = albert.embeddings.word_embeddings.weight.detach().numpy().astype(np.float32)
    projection = albert.encoder.embedding_hidden_mapping_in
    np.save(staging / WORDS_FILE, table)
    np.savez(
        staging / PROJECTION_FILE,
        weight=projection.weight.detach().numpy().astype(np.float32),
        bias=projection.bias.detach().numpy().astype(np.float32),
    )
    return {
        "file": WORDS_FILE,
        "sha256": sha256_of(staging / WORDS_FILE),
        "projection_file": PROJECTION_FILE,
        "projection_sha256": sha256_of(staging / PROJECTION_FILE),
    }


def _write_manifest(
    staging: Path,
    checkpoint: Checkpoint,
    tokenizer_record: dict,
    pooling: str,
    normalize: bool,
    variants: dict[str, Variant],
    word_embeddings: dict[str, str],
) -> Manifest:
    config = checkpoint.config
    keys = (
        "vocab_size",
        "embedding_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "num_hidden_groups",
        "inner_group_num",
        "type_vocab_size",
    )
    architecture = {k: config[k] for k in keys if k in config}
    architecture["hidden_act"] = config.get("hidden_act", "gelu_new")
    manifest = Manifest(
        source=checkpoint.source,
        architecture=architecture,
        tokenizer=tokenizer_record,
        pooling=pooling,
        normalize=normalize,
        variants=variants,
        word_embeddings=word_embeddings,
        tools=_tool_versions(),
    )
    manifest.save(staging)
    return manifest


def _tool_versions() -> dict[str, str]:
    versions = {}
    for dist in TOOLS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions
