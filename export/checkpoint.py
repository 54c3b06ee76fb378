"""Find and check the checkpoint to export: a local directory or a Hugging Face hub id.

A hub id is fetched into the local cache first, so everything after this module deals
with one local directory. Sentence-transformers layouts are read here too, because their
pooling module decides the model's default pooling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_onnx.errors import ExportError
from albert_onnx.runtime.model.manifest import sha256_of

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "spiece.model", "vocab.txt"]
ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
ST_MODULES_ALLOWED = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}


@dataclass(frozen=True)
class Checkpoint:
    """A local ALBERT checkpoint, ready for `from_pretrained`."""

    model_dir: Path
    tokenizer_dir: Path
    root: Path  # everything the export reads lies in here
    source: dict[str, Any]
    config: dict[str, Any]
    pooling: str | None = None
    normalize: bool | None = None


def resolve_checkpoint(model: str, revision: str | None = None) -> Checkpoint:
    """Turn MODEL (directory or hub id) into a checked local checkpoint."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{path} is a file; pass the checkpoint directory that holds it")
        root = path.resolve()
        source = {"path": str(root), "sha256": _content_hash(root)}
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ExportError(f"{model}: no such directory")
    else:
        root, commit = _fetch_from_hub(model, revision)
        source = {"hub_id": model, "revision": commit}
    return _read_layout(root, source)


def _fetch_from_hub(model_id: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        import httpx

        network: tuple[type[Exception], ...] = (httpx.HTTPError,)
    except ImportError:
        network = ()
    try:
        local = Path(snapshot_download(model_id, revision=revision, allow_patterns=HUB_PATTERNS))
    # the hub's own errors are OSErrors (offline, 404, auth) or ValueErrors (a malformed
    # id); a transport failure can surface as httpx's own error
    except (OSError, ValueError, *network) as exc:
        raise ExportError(
            f"could not fetch '{model_id}' from the Hugging Face Hub "
            f"({type(exc).__name__}); you may be offline: pass a local checkpoint directory"
        ) from exc
    return local, local.name


def _read_layout(root: Path, source: dict[str, Any]) -> Checkpoint:
    pooling, normalize, model_dir = None, None, root
    modules_file = root / "modules.json"
    if modules_file.is_file():
        pooling, normalize, model_dir = _read_sentence_transformers(root, modules_file)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{model_dir}: no config.json; this is not a Hugging Face checkpoint")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type != "albert":
        raise ExportError(
            f"{config_file}: model_type is {model_type!r}, not 'albert'; "
            "albert-onnx exports ALBERT checkpoints only"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise ExportError(f"{model_dir}: no weights (expected one of {', '.join(WEIGHT_FILES)})")
    tokenizer_dir = next(
        (d for d in (model_dir, root) if any((d / f).is_file() for f in TOKENIZER_FILES)), None
    )
    if tokenizer_dir is None:
        raise ExportError(
            f"{model_dir}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    return Checkpoint(model_dir, tokenizer_dir, root, source, config, pooling, normalize)


def _read_sentence_transformers(root: Path, modules_file: Path) -> tuple[str, bool, Path]:
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    by_type = {m["type"]: m for m in modules}
    unsupported = sorted(set(by_type) - ST_MODULES_ALLOWED)
    if unsupported:
        raise ExportError(
            f"{modules_file}: unsupported sentence-transformers modules {unsupported}"
        )
    transformer = by_type.get("sentence_transformers.models.Transformer")
    pooling_module = by_type.get("sentence_transformers.models.Pooling")
    if transformer is None or pooling_module is None:
        raise ExportError(f"{modules_file}: needs a Transformer and a Pooling module")
    pooling_config = root / pooling_module["path"] / "config.json"
    settings = json.loads(pooling_config.read_text(encoding="utf-8"))
    chosen = [mode for key, mode in ST_POOLING_KEYS.items() if settings.get(key)]
    others = [k for k, v in settings.items() if k.startswith("pooling_mode") and v]
    if len(chosen) != 1 or len(others) != 1:
        raise ExportError(
            f"{pooling_config}: pooling {others} is not supported (one of mean, cls, max)"
        )
    normalize = "sentence_transformers.models.Normalize" in by_type
    return chosen[0], normalize, root / transformer["path"]


def _content_hash(root: Path) -> str:
    """Hash of the files an export reads, so a manifest names the exact checkpoint."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            digest.update(f"{path.relative_to(root)}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()
