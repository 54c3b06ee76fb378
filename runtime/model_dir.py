"""Find a model directory (explicit, $ALBERT_ONNX_MODEL, or the shipped default) and pick
the graph variant for this machine, after checking it against the manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from albert_onnx.runtime.manifest import Manifest, ManifestError, load_manifest, verified_file
from albert_onnx.runtime.providers import choose_provider

ENV_MODEL = "ALBERT_ONNX_MODEL"
# Best first; the last entries only matter for directories shipped without some variants.
PREFERRED = {"cuda": ("fp16", "fp32", "int8"), "cpu": ("int8", "fp32", "fp16")}


def default_model_dir() -> Path:
    from albert_onnx.models import DEFAULT_MODEL

    return Path(str(resources.files("albert_onnx.models") / DEFAULT_MODEL))


def resolve_model(model: str | Path | None) -> Path:
    """MODEL, else $ALBERT_ONNX_MODEL, else the model shipped with the package."""
    if model is not None:
        return Path(model)
    if os.environ.get(ENV_MODEL):
        return Path(os.environ[ENV_MODEL])
    path = default_model_dir()
    if not path.is_dir():
        raise ManifestError(
            f"the default model is not installed at {path}; pass --model DIR or set {ENV_MODEL}"
        )
    return path


def cuda_probe_graph(directory: Path, manifest: Manifest) -> Path:
    """The graph a CUDA session is tried on: the one CUDA would run."""
    name = next(p for p in PREFERRED["cuda"] if p in manifest.variants)
    return directory / manifest.variants[name].file


@dataclass(frozen=True)
class ModelChoice:
    directory: Path
    manifest: Manifest
    provider: str
    precision: str
    graph: Path
    tokenizer: Path


def open_model(
    model: str | Path | None, provider: str = "auto", precision: str = "auto"
) -> ModelChoice:
    """Resolve, check hashes and choose provider + precision, before any work starts."""
    directory = resolve_model(model)
    manifest = load_manifest(directory)
    available = set(manifest.variants)
    chosen_provider = choose_provider(provider, cuda_probe_graph(directory, manifest))
    if precision == "auto":
        precision = next(p for p in PREFERRED[chosen_provider] if p in available)
    elif precision not in available:
        raise ManifestError(
            f"{directory}: no {precision} variant in the manifest (it has "
            f"{', '.join(sorted(available))}); re-export with --quantize / --fp16"
        )
    variant = manifest.variants[precision]
    graph = verified_file(directory, variant.file, variant.sha256)
    tokenizer = verified_file(directory, manifest.tokenizer["file"], manifest.tokenizer["sha256"])
    return ModelChoice(directory, manifest, chosen_provider, precision, graph, tokenizer)
