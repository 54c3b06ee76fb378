"""Near-paraphrase variants of training texts, so that batches hold pairs of graded similarity.

STS scores how close two *related* sentences are, but two texts drawn at random from a corpus
are almost always unrelated, so a loss over a random batch says little about the fine
differences STS grades. Each variant here is a small edit of a real text (a WordNet synonym,
a dropped or swapped word, a cut tail, or a content word exchanged for an unrelated one);
the teacher scores every variant itself, so the edits need not preserve meaning: they only
have to land near the original, at distances the teacher grades.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDNET_PARTS = ("noun", "verb", "adj", "adv")
FUNCTION_WORDS = """
a an the and or but of to in on at by for with from as is are was were be been it its
this that these those he she they we you i his her their our your not no
"""
STOPWORDS = frozenset(FUNCTION_WORDS.split())


def bare(word: str) -> str:
    """The word without the punctuation that whitespace splitting leaves on it."""
    return word.strip(".,;:!?\"'()")


def first_sense_synonyms(wordnet_dir: Path) -> dict[str, list[str]]:
    """Each single-word lemma's synonyms in its most frequent sense (WordNet's index order)."""
    synsets: dict[tuple[str, str], list[str]] = {}
    for part in WORDNET_PARTS:
        for line in (wordnet_dir / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # licence header
            fields = line.split()
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].split("(")[0].lower() for i in range(count)]
            synsets[(part, fields[0])] = [w for w in words if "_" not in w]
    synonyms: dict[str, list[str]] = {}
    for part in WORDNET_PARTS:
        for line in (wordnet_dir / f"index.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, senses = fields[0], int(fields[2])
            others = [w for w in synsets[(part, fields[-senses])] if w != lemma]
            if "_" not in lemma and others and lemma not in synonyms:
                synonyms[lemma] = others
    return synonyms


class Perturber:
    """Makes one small edit to a text; which edit is drawn at random."""

    def __init__(self, synonyms: dict[str, list[str]], filler: list[str], seed: int) -> None:
        self.synonyms, self.filler = synonyms, filler
        self.rng = random.Random(seed)
        self.edits = (self.synonym, self.synonym, self.drop, self.swap, self.cut, self.exchange)

    def __call__(self, text: str) -> str | None:
        words = text.split()
        if len(words) < 4:
            return None
        for _ in range(3):  # an edit may not apply (no synonym found, say); try another
            edited = self.rng.choice(self.edits)(list(words))
            if edited and edited != words:
                return " ".join(edited)
        return None

    def _content(self, words: list[str]) -> list[int]:
        return [i for i, w in enumerate(words) if bare(w).lower() not in STOPWORDS]

    def synonym(self, words: list[str]) -> list[str] | None:
        places = [i for i in self._content(words) if bare(words[i]).lower() in self.synonyms]
        if not places:
            return None
        for i in self.rng.sample(places, min(len(places), self.rng.choice((1, 1, 2)))):
            core = bare(words[i])
            new = self.rng.choice(self.synonyms[core.lower()])
            new = new.capitalize() if core[:1].isupper() else new
            words[i] = words[i].replace(core, new, 1)
        return words

    def drop(self, words: list[str]) -> list[str]:
        del words[self.rng.randrange(len(words))]
        return words

    def swap(self, words: list[str]) -> list[str]:
        i = self.rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return words

    def cut(self, words: list[str]) -> list[str]:
        return words[: max(3, round(len(words) * self.rng.uniform(0.5, 0.85)))]

    def exchange(self, words: list[str]) -> list[str] | None:
        places = self._content(words)
        if not places:
            return None
        i = self.rng.choice(places)
        core = bare(words[i])
        if not core:
            return None
        words[i] = words[i].replace(core, self.rng.choice(self.filler), 1)
        return words
