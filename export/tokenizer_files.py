"""Write the one fast `tokenizer.json` that the runtime needs, from whatever the checkpoint has.

Order of preference: the checkpoint's own tokenizer.json; a SentencePiece `spiece.model`
converted with transformers' AlbertConverter; a BERT WordPiece `vocab.txt` (Chinese ALBERT).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokenizers import Tokenizer

from albert_onnx.errors import ExportError

KIND_BY_MODEL = {"Unigram": "sentencepiece", "WordPiece": "wordpiece"}
UNBOUNDED = 1_000_000


def write_tokenizer(
    tokenizer_dir: Path, vocab_size: int, max_positions: int, destination: Path
) -> dict[str, Any]:
    """Save DIR's tokenizer as fast JSON; return the manifest's `tokenizer` record."""
    settings = _tokenizer_config(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    elif (tokenizer_dir / "spiece.model").is_file():
        tokenizer = _from_sentencepiece(tokenizer_dir / "spiece.model", settings)
    else:
        tokenizer = _from_wordpiece(tokenizer_dir / "vocab.txt", settings)
    model_type = json.loads(tokenizer.to_str())["model"]["type"]
    kind = KIND_BY_MODEL.get(model_type)
    if kind is None:
        raise ExportError(f"{tokenizer_dir}: unsupported tokenizer model {model_type!r}")
    if tokenizer.get_vocab_size() > vocab_size:
        raise ExportError(
            f"{tokenizer_dir}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the "
            f"model's embedding table only {vocab_size}; they do not belong together"
        )
    if kind == "sentencepiece":
        tokenizer = _strip_ends(tokenizer)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(destination))
    declared = int(settings.get("model_max_length") or UNBOUNDED)
    return {
        "file": destination.name,
        "kind": kind,
        "max_length": min(declared if declared < UNBOUNDED else max_positions, max_positions),
        "vocab_size": tokenizer.get_vocab_size(),
    }


def _tokenizer_config(tokenizer_dir: Path) -> dict[str, Any]:
    path = tokenizer_dir / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _from_sentencepiece(model_file: Path, settings: dict[str, Any]) -> Tokenizer:
    """AlbertConverter, minus the user-defined pieces that newer transformers add as tokens.

    Those added tokens (`( ) " - . – £ €`) change ids: `key-board` would become
    `▁key - ▁board` instead of ALBERT's `▁key - board`.
    """
    import sentencepiece
    from transformers.convert_slow_tokenizer import AlbertConverter

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    original = SimpleNamespace(
        vocab_file=str(model_file),
        do_lower_case=settings.get("do_lower_case", True),
        keep_accents=settings.get("keep_accents", False),
        convert_tokens_to_ids=processor.piece_to_id,
    )
    spec = json.loads(AlbertConverter(original).converted().to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["special"]]
    return Tokenizer.from_str(json.dumps(spec))


def _from_wordpiece(vocab_file: Path, settings: dict[str, Any]) -> Tokenizer:
    from transformers import BertTokenizerFast

    bert = BertTokenizerFast.from_pretrained(
        vocab_file.parent,
        do_lower_case=settings.get("do_lower_case", True),
        tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
    )
    return bert.backend_tokenizer


def _strip_ends(tokenizer: Tokenizer) -> Tokenizer:
    """Strip leading/trailing whitespace, as ALBERT's own preprocessing does.

    Without it the fast tokenizer emits an extra `▁` before [SEP] for texts with trailing
    spaces, which the original SentencePiece tokenizer never does.
    """
    spec = json.loads(tokenizer.to_str())
    strip = {"type": "Strip", "strip_left": True, "strip_right": True}
    normalizer = spec.get("normalizer")
    if normalizer is None:
        spec["normalizer"] = strip
    elif normalizer.get("type") == "Sequence":
        if normalizer["normalizers"][:1] != [strip]:
            normalizer["normalizers"].insert(0, strip)
    elif normalizer != strip:
        spec["normalizer"] = {"type": "Sequence", "normalizers": [strip, normalizer]}
    return Tokenizer.from_str(json.dumps(spec))
