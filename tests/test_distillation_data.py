"""The default model's training data (models/training): dictionary definitions come out clean,
and every near-paraphrase variant is one small edit away from its real text."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "training"))
from augment import Perturber, first_sense_synonyms
from corpus import gcide_definitions

# Entries in the dictd text layout of Debian's dict-gcide (abridged from the real file).
GCIDE_TEXT = """\
Arrive \\Ar*rive"\\, v. t.
   1. To bring to shore. [Obs.]
      [1913 Webster]

            And made the sea-trod ship arrive them. --Chapman.
      [1913 Webster]

Arrogance \\Ar"ro*gance\\, n. [F., fr. L. arrogantia, fr.
   arrogans. See {Arrogant}.]
   The act or habit of arrogating, or making undue claims in an
   overbearing manner; proud contempt of others.
   [1913 Webster]

   Syn: Haughtiness; hauteur; assumption; lordliness.
        [1913 Webster]

   2. Containing arrogance; marked with {arrogance}. --Milton.
      [1913 Webster]
"""

# WordNet 3.0's data/index layout: "guitar" and "cat" with one synset each.
WORDNET_DATA = {
    "noun": "00000001 06 n 02 guitar 0 axe 0 000 | a stringed instrument\n"
    "00000002 05 n 02 cat 0 true_cat 0 000 | a feline mammal\n",
}
WORDNET_INDEX = {
    "noun": "guitar n 1 0 1 0 00000001  \ncat n 1 0 1 0 00000002  \n",
}


def test_gcide_definitions_drop_headwords_etymology_quotations_and_source_tags(tmp_path):
    (tmp_path / "gcide.dict.dz").write_bytes(gzip.compress(GCIDE_TEXT.encode()))
    assert list(gcide_definitions(tmp_path)) == [
        "To bring to shore.",
        "The act or habit of arrogating, or making undue claims in an overbearing manner; "
        "proud contempt of others.",
        "Containing arrogance; marked with arrogance.",
    ]


def test_synonyms_come_from_the_first_sense_and_skip_multiword_lemmas(tmp_path):
    for part in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{part}").write_text(WORDNET_DATA.get(part, ""))
        (tmp_path / f"index.{part}").write_text(WORDNET_INDEX.get(part, ""))
    assert first_sense_synonyms(tmp_path) == {"guitar": ["axe"]}


def edit_kind(before: list[str], after: list[str]) -> str | None:
    """Which of the Perturber's edits turns BEFORE into AFTER, if any."""
    if len(after) == len(before) - 1 and any(
        before[:i] + before[i + 1 :] == after for i in range(len(before))
    ):
        return "drop"
    if 3 <= len(after) < len(before) and before[: len(after)] == after:
        return "cut"
    if len(after) != len(before):
        return None
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    if len(changed) == 2 and changed[1] == changed[0] + 1:
        i = changed[0]
        if (after[i], after[i + 1]) == (before[i + 1], before[i]):
            return "swap"
    replaced = {(before[i].strip("."), after[i].strip(".")) for i in changed}
    if changed and replaced <= {("guitar", "axe"), ("playing", "strumming")}:
        return "synonym"
    if len(changed) == 1 and after[changed[0]].strip(".") == "tomato":
        return "exchange"
    return None


def test_every_variant_is_one_small_edit_of_its_text():
    perturb = Perturber({"guitar": ["axe"], "playing": ["strumming"]}, ["tomato"], seed=0)
    text = "A man is playing a guitar on the stage."
    kinds = [edit_kind(text.split(), perturb(text).split()) for _ in range(300)]
    assert None not in kinds
    assert set(kinds) == {"drop", "cut", "swap", "synonym", "exchange"}


def test_texts_too_short_to_edit_get_no_variant():
    assert Perturber({}, ["tomato"], seed=0)("Too short.") is None
