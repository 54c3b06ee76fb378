"""Real-text benchmark corpora built from tests/data (see tests/data/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpora"


def wikitext_lines() -> list[str]:
    """WikiText-2 test paragraphs and ` = Heading = ` lines, in file order."""
    text = (DATA / "wikitext2_test_head300.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def sts_sentences(splits: tuple[str, ...] = ("test",)) -> list[str]:
    return [s.strip() for split in splits
            for line in (DATA / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines()
            for s in line.split("\t")[5:7]]  # fmt: skip


def mixed(long: list[str], short: list[str]) -> list[str]:
    """Interleave long and short texts, as a real stream of mixed lengths arrives."""
    pairs = [t for pair in zip(long, short, strict=False) for t in pair]
    n = min(len(long), len(short))
    return pairs + long[n:] + short[n:]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return path
