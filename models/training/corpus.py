"""Collect the English text the default model is distilled on, all of it available offline.

    python models/training/corpus.py OUT.txt --shared ../shared/data --debs DIR

Sources (see the model card for licences):
- STS-benchmark train and dev sentences (never the test split, which is the evaluation);
- wikitext-2 raw paragraphs, split into sentences;
- WordNet 3.0 glosses and usage examples (Debian package `wordnet-base`);
- fortune cookie files (Debian packages `fortunes`, `fortunes-min`);
- a sample of GNU Collaborative International Dictionary of English definitions (Debian
  package `dict-gcide`; Webster's 1913 plus later additions), without the quotations.

Next to OUT.txt it writes OUT.groups.npy, one group number per line: each text is followed by
its near-paraphrase variants (augment.py), and a group's lines share a number so that the
distillation batches keep them together. The Debian packages are fetched with
`apt-get download` (no root needed) and unpacked with `dpkg-deb -x` into DIR when DIR does
not already hold them.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from augment import STOPWORDS, Perturber, first_sense_synonyms

DEBIAN_PACKAGES = ("wordnet-base", "fortunes", "fortunes-min", "dict-gcide")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
GCIDE_HEADWORD = re.compile(r"^\S[^\\]*\\[^\\]*\\,?\s*")
GCIDE_TAG = re.compile(
    r"\[(?:1913 Webster|WordNet[^\]]*|PJC|Century Dict\.|Chambers[^\]]*|"
    r"Webster 1913 Suppl\.|Obs\.|R\.|Archaic|Colloq\.|Rare)\]"
)
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


def gcide_definitions(dictd_dir: Path) -> Iterator[str]:
    """Definitions from the dictd text: header blocks lose the headword and etymology,
    numbered senses their number; quotations, synonym lists and notes are skipped."""
    text = gzip.decompress((dictd_dir / "gcide.dict.dz").read_bytes()).decode("utf-8", "replace")
    for block in text.split("\n\n"):
        lines = block.split("\n")
        first = lines[0]
        if not first.strip():
            continue
        body = " ".join(line.strip() for line in lines)
        if not first.startswith(" "):
            body = GCIDE_HEADWORD.sub("", body)
            body = re.sub(r"^[a-z. &]+(?:\[[^\]]*\])?\.?\s*", "", body)  # part of speech
            body = re.sub(r"^\[[^\]]*\]\s*", "", body)  # etymology
        elif len(first) - len(first.lstrip()) > 5:
            continue  # a quotation and its author
        elif first.lstrip().startswith(("Syn:", "Note:")):
            continue
        body = re.sub(r"^\d+\.\s*(\([^)]*\)\s*)?", "", body)  # a sense number
        body = re.sub(r"--\w.*$", "", body)  # a cited author ("--Johnson.")
        body = " ".join(GCIDE_TAG.sub("", body).replace("{", "").replace("}", "").split())
        if body[:1].isalpha():
            yield body[0].upper() + body[1:]


def fetch_debian(debs: Path) -> Path:
    """Unpack the Debian packages into DEBS/root once; returns that root."""
    root = debs / "root"
    if (root / "usr/share/dictd/gcide.dict.dz").is_file():
        return root
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def collect(shared: Path, root: Path, gcide: int, seed: int) -> dict[str, list[str]]:
    """Every source's texts, filtered by length and de-duplicated across sources."""
    definitions = list(gcide_definitions(root / "usr/share/dictd"))
    corpora = shared / "corpora"
    sources = {
        "stsb-train-dev": sts_sentences(corpora / "stsbenchmark"),
        "wikitext-2": wikitext_sentences(corpora / "wikitext-2-raw" / "wiki.test.raw"),
        "wordnet-3.0": wordnet_glosses(root / "usr/share/wordnet"),
        "fortunes": fortunes(root / "usr/share/games/fortunes"),
        "gcide": random.Random(seed).sample(definitions, min(gcide, len(definitions))),
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


def with_variants(
    kept: dict[str, list[str]], wordnet_dir: Path, per_sts: int, share: float, seed: int
) -> list[list[str]]:
    """Groups of a text and its variants: PER_STS for each STS-B sentence (the genre STS
    tests), one for a random SHARE of the other texts."""
    counts = Counter(w.lower() for group in kept.values() for t in group for w in t.split())
    filler = [w for w, n in counts.items() if n >= 20 and w.isalpha() and w not in STOPWORDS]
    perturb = Perturber(first_sense_synonyms(wordnet_dir), filler, seed)
    rng = random.Random(seed)
    groups = []
    for name, texts in kept.items():
        for text in texts:
            wanted = per_sts if name == "stsb-train-dev" else int(rng.random() < share)
            variants = {perturb(text) for _ in range(wanted)} - {None, text}
            groups.append([text, *sorted(variants)])
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="OUT.txt")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--debs", type=Path, default=Path(".work/debian"))
    parser.add_argument("--gcide", type=int, default=40_000, help="definitions to sample")
    parser.add_argument("--sts-variants", type=int, default=2, help="per STS-B sentence")
    parser.add_argument("--variant-share", type=float, default=0.4, help="of the other texts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = fetch_debian(args.debs)
    kept = collect(args.shared, root, args.gcide, args.seed)
    groups = with_variants(
        kept, root / "usr/share/wordnet", args.sts_variants, args.variant_share, args.seed
    )
    random.Random(args.seed).shuffle(groups)
    texts = [text for group in groups for text in group]
    numbers = np.repeat(np.arange(len(groups), dtype=np.int32), [len(g) for g in groups])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(texts) + "\n", encoding="utf-8")
    np.save(args.output.with_suffix(".groups.npy"), numbers)
    for name, group in kept.items():
        print(f"{name:16s} {len(group):7d} texts")
    print(f"{'variants':16s} {len(texts) - len(groups):7d} texts")
    print(f"{'total':16s} {len(texts):7d} texts in {len(groups)} groups -> {args.output}")


if __name__ == "__main__":
    main()
