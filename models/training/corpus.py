"""Collect the English text the default model is distilled on, all of it available offline.

    python models/training/corpus.py OUT.txt --shared ../shared/data --debs DIR

Sources (see the model card for licences):
- STS-benchmark train and dev sentences (never the test split, which is the evaluation);
- wikitext-2 raw paragraphs, split into sentences;
- WordNet 3.0 glosses and usage examples (Debian package `wordnet-base`);
- fortune cookie files (Debian packages `fortunes`, `fortunes-min`).

The two Debian packages are fetched with `apt-get download` (no root needed) and unpacked
with `dpkg-deb -x` into DIR when DIR does not already hold them.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

DEBIAN_PACKAGES = ("wordnet-base", "fortunes", "fortunes-min")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
MIN_WORDS, MAX_WORDS = 4, 60


def sts_sentences(sts_dir: Path) -> Iterator[str]:
    for split in ("sts-train.csv", "sts-dev.csv"):
        with open(sts_dir / split, encoding="utf-8") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                yield from row[5:7]


def wikitext_sentences(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        # wikitext's tokenisation artefacts: " @-@ ", " @,@ ", " , " -> natural spacing
        line = re.sub(r" @(.)@ ", r"\1", line)
        line = re.sub(r" ([.,;:!?)'])", r"\1", line).replace("( ", "(")
        yield from SENTENCE_END.split(line)


def wordnet_glosses(wordnet_dir: Path) -> Iterator[str]:
    """Each synset's definition and its quoted usage examples, as separate texts."""
    for part in ("noun", "verb", "adj", "adv"):
        for line in (wordnet_dir / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            for piece in line.split("|", 1)[1].split(";"):
                piece = piece.strip().strip('"').strip()
                if piece:
                    yield piece[0].upper() + piece[1:]


def fortunes(fortune_dir: Path) -> Iterator[str]:
    for path in sorted(fortune_dir.iterdir()):
        if path.suffix or path.name in ("ascii-art", "translate-me"):
            continue  # .dat indexes; pictures; non-English
        for cookie in path.read_text(encoding="latin-1").split("\n%\n"):
            body = cookie.split("\t\t-- ")[0]
            yield " ".join(body.split())


def fetch_debian(debs: Path) -> Path:
    """Unpack the Debian packages into DEBS/root once; returns that root."""
    root = debs / "root"
    if (root / "usr/share/wordnet/data.noun").is_file():
        return root
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def collect(shared: Path, debs: Path) -> dict[str, list[str]]:
    root = fetch_debian(debs)
    corpora = shared / "corpora"
    sources = {
        "stsb-train-dev": sts_sentences(corpora / "stsbenchmark"),
        "wikitext-2": wikitext_sentences(corpora / "wikitext-2-raw" / "wiki.test.raw"),
        "wordnet-3.0": wordnet_glosses(root / "usr/share/wordnet"),
        "fortunes": fortunes(root / "usr/share/games/fortunes"),
    }
    seen: set[str] = set()
    kept: dict[str, list[str]] = {}
    for name, texts in sources.items():
        kept[name] = []
        for text in texts:
            text = text.strip()
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text.lower() not in seen:
                seen.add(text.lower())
                kept[name].append(text)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--debs", type=Path, default=Path(".work/debian"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kept = collect(args.shared, args.debs)
    texts = [t for group in kept.values() for t in group]
    random.Random(args.seed).shuffle(texts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(texts) + "\n", encoding="utf-8")
    for name, group in kept.items():
        print(f"{name:16s} {len(group):7d} texts")
    print(f"{'total':16s} {len(texts):7d} texts -> {args.output}")


if __name__ == "__main__":
    main()
