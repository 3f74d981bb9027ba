"""When two rubric statements are the same rule: a canonical key that paraphrases share.

Generators reword: "The sky appears blue." / "the sky is blue", "Text is readable and spelled
correctly." / "All text is spelled correctly, and the text is legible." Scoring both costs judge
calls and gives the refiner two copies of one feature. Near misses must stay apart, however
alike they look: "bright" / "dark", "red" / "blue", "the left half is brighter than the right
half" / its reverse, "the image is bright" / "the image is not bright", "a red car and a blue
truck" / "a blue car and a red truck".

:func:`statement_key` maps a statement to a key; statements with equal keys are one rule:

1. lower case, ``n't`` -> ``not``, words (letters and digits; ``top-left`` = ``top left``) with
   commas and semicolons kept as clause marks;
2. single words to one spelling: British/American spellings and synonyms (:data:`SYNONYMS`,
   extendable); then multi-word spellings rewritten (``colour saturation`` -> ``saturation``,
   :data:`PHRASES`), and filler dropped -- articles, the copula and its stand-ins (``appears``,
   ``looks``), possession (``has``, ``contains``, ``shows``) and hedges (``clearly``,
   ``visibly``) (:data:`FILLER`);
3. each remaining word stemmed with the Snowball English stemmer (``snowballstemmer``), so
   ``spelled`` / ``spelling``, ``fingers`` / ``finger``, ``highly`` / ``high`` agree;
4. split into clauses at ``and``, ``but``, ``while``, commas and semicolons; the key is the sorted
   tuple of clauses, each an ordered word tuple.

Word order inside a clause is kept, because it carries meaning ("A brighter than B", "dog chasing
cat", which adjective goes with which noun); whole clauses may be reordered. Substituted content
words, negations, numbers, quantifiers and comparatives all change the key. The rule is lexical,
deterministic and needs no model: a sentence embedding (e.g. all-MiniLM-L6-v2) rates the near
misses above as close as the paraphrases (antonyms and swapped relations share nearly all their
context), so a similarity threshold cannot separate them, and nothing may be downloaded at run
time. What it misses are open-vocabulary synonyms not in :data:`SYNONYMS` ("legible" /
"easy to read"): those stay two rubrics, and the L1 refiner keeps at most one of two
near-identical features -- a wasted judge call, never a lost rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import snowballstemmer

_TOKEN = re.compile(r"[a-z0-9]+|[,;]")
_STEMMER = snowballstemmer.stemmer("english")

CLAUSE_BREAKS = frozenset({",", ";", "and", "but", "while", "whereas"})
FILLER = frozenset(
    {
        # articles and the copula with its stand-ins
        *("a", "an", "the", "is", "are", "am", "be", "been", "being", "was", "were"),
        *("appear", "appears", "appeared", "look", "looks", "seem", "seems", "does", "do"),
        # possession: "the image has / contains / shows a cat"
        *("has", "have", "contain", "contains", "include", "includes", "show", "shows"),
        *("depict", "depicts", "display", "displays"),
        # hedges and emphasis
        *("clearly", "visibly", "noticeably", "distinctly", "very", "quite", "really", "overall"),
    }
)
SYNONYMS: dict[str, str] = {
    "colour": "color",
    "colours": "colors",
    "coloured": "colored",
    "centre": "center",
    "grey": "gray",
    "predominantly": "mostly",
    "mainly": "mostly",
    "largely": "mostly",
    "picture": "image",
    "photo": "image",
    "photograph": "image",
    "readable": "legible",
    "completely": "fully",
    "entirely": "fully",
    "wholly": "fully",
    "each": "all",
    "every": "all",
    "cannot": "not",
}
"""One spelling per group of interchangeable words (the pixel judge treats the same ones alike)."""
PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("color", "saturation"): ("saturation",),
    ("can", "not"): ("not",),
}
"""Multi-word spellings rewritten (after :data:`SYNONYMS`) before filler is dropped."""

StatementKey = tuple[tuple[str, ...], ...]


def _rewrite_phrases(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        for phrase, replacement in PHRASES.items():
            if tuple(words[i : i + len(phrase)]) == phrase:
                out += replacement
                i += len(phrase)
                break
        else:
            out.append(words[i])
            i += 1
    return out


@lru_cache(maxsize=65536)
def _key(text: str, synonyms: tuple[tuple[str, str], ...]) -> StatementKey:
    table = SYNONYMS | dict(synonyms)
    raw = _TOKEN.findall(text.lower().replace("can't", "cannot").replace("n't", " not"))
    words = _rewrite_phrases([table.get(w, w) for w in raw])
    clauses, current = set(), []
    for word in words + [","]:
        if word in CLAUSE_BREAKS:
            if current:
                clauses.add(tuple(current))
            current = []
        elif word not in FILLER:
            current.append(_STEMMER.stemWord(word))
    return tuple(sorted(clauses))


def statement_key(text: str, synonyms: Mapping[str, str] | None = None) -> StatementKey:
    """The canonical key of a rubric statement; equal keys mean the same rule (module doc).

    ``synonyms`` adds word -> spelling entries to :data:`SYNONYMS` (e.g. a domain's terms).
    """
    return _key(text, tuple(sorted((synonyms or {}).items())))
