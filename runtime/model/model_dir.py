"""The model directory: found (explicit, $ALBERT_ONNX_MODEL, or the shipped default), its
manifest read, and each file handed out only after its sha256 matched the manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from albert_onnx.errors import ManifestError
from albert_onnx.runtime.model.manifest import Manifest, load_manifest, verified_file

ENV_MODEL = "ALBERT_ONNX_MODEL"


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


@dataclass(frozen=True)
class ModelDir:
    directory: Path
    manifest: Manifest

    @classmethod
    def open(cls, model: str | Path | None) -> ModelDir:
        directory = resolve_model(model)
        return cls(directory, load_manifest(directory))

    @property
    def name(self) -> str:
        return self.directory.name

    def graph(self, precision: str) -> Path:
        """The verified graph file of PRECISION (fp32, int8 or fp16)."""
        variants = self.manifest.variants
        if precision not in variants:
            raise ManifestError(
                f"{self.directory}: no {precision} variant in the manifest (it has "
                f"{', '.join(sorted(variants))}); re-export with --quantize / --fp16"
            )
        return verified_file(self.directory, variants[precision].file, variants[precision].sha256)

    def tokenizer(self) -> Path:
        record = self.manifest.tokenizer
        return verified_file(self.directory, record["file"], record["sha256"])

    def fingerprint(self, precision: str) -> dict[str, str]:
        """What identifies the vectors this directory gives: the graph's and tokenizer's bytes."""
        return {
            "graph_sha256": self.manifest.variants[precision].sha256,
            "tokenizer_sha256": self.manifest.tokenizer["sha256"],
        }
