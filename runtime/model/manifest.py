"""The model directory's manifest: the contract between the export and runtime halves.

Export writes it; the runtime reads it and refuses to start on anything it cannot trust
(unknown format, missing file, changed bytes) before any work is done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from albert_onnx.errors import ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "albert_onnx.json"
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
POOLING_MODES = ("mean", "cls", "max")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Variant:
    """One ONNX graph of the model and what was measured about it at export."""

    file: str
    sha256: str
    bytes: int
    opset: int
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, Any] = field(default_factory=dict)
    fused_operators: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    source: dict[str, Any]
    architecture: dict[str, int]
    tokenizer: dict[str, Any]
    pooling: str
    normalize: bool
    variants: dict[str, Variant]
    tools: dict[str, str]
    word_embeddings: dict[str, str] = field(default_factory=dict)  # absent for some models
    # a graph variant -> the int8/uint8 ranges of its vectors (`albert-onnx calibrate`)
    calibration: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def max_length(self) -> int:
        return int(self.tokenizer["max_length"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, directory: Path) -> None:
        """Written whole or not at all: a model directory is never left without one."""
        path = directory / MANIFEST_NAME
        temporary = path.with_name(f".{MANIFEST_NAME}.tmp")
        temporary.write_text(self.to_json(), encoding="utf-8")
        temporary.replace(path)


def load_manifest(directory: str | Path) -> Manifest:
    """Read and check DIR/albert_onnx.json; file hashes are checked by `verified_file`."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{directory}: no {MANIFEST_NAME}; is this an albert-onnx model directory?"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {version!r} is not supported (this albert-onnx reads "
            f"{FORMAT_VERSION}); re-export the model or upgrade albert-onnx"
        )
    try:
        raw["variants"] = {name: Variant(**v) for name, v in raw["variants"].items()}
        manifest = Manifest(**raw)
        int(manifest.tokenizer["max_length"]), str(manifest.tokenizer["file"])
        int(manifest.architecture["hidden_size"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    if manifest.pooling not in POOLING_MODES:
        raise ManifestError(f"{path}: field 'pooling': unknown mode {manifest.pooling!r}")
    return manifest


def verified_file(directory: Path, name: str, expected_sha256: str) -> Path:
    """Return DIR/name after checking that it exists and its bytes are the exported ones."""
    path = Path(directory) / name
    if not path.is_file():
        raise ManifestError(f"{path}: listed in {MANIFEST_NAME} but missing")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ManifestError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's "
            f"{expected_sha256[:12]}...; the file was changed or truncated"
        )
    return path
