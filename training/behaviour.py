"""Did the candidate's answers change, and does a taught answer leak into unrelated ones?

Pure functions over answer texts (the training child generates the answers; the gate decides).

*Changed* is a similarity below :data:`CHANGED_BELOW`: difflib's ratio over the normalised word
lists of the two greedy answers (lower case, punctuation dropped). Exact text comparison is useless
on a small model: two equivalent runs differ late in almost every answer (a near-tie flips a token
and the rest diverges). The threshold was calibrated on hand-labelled pairs of (reference,
candidate) answers as "same answer, maybe reworded or with another tail" vs "a different answer";
it calls no pair of two equivalent runs changed.

*Leaked* means the candidate's answer to an unrelated question contains a taught term that
neither the question nor the reference answer contains. Taught terms are the numbers and
capitalised words of the run's taught answers (corrections, 👍 answers) that appear in none of
the regression questions or reference answers, minus common words: names and figures, what a
collapsing model repeats everywhere.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CHANGED_BELOW = 0.25
COMMON = frozenset(
    "the a an and or but if it its is are was were be this that these those yes no sure ok "
    "okay i you he she we they my your our their here there what which who whom when where why "
    "how hello hi thanks thank please well so also of in on at to for from by with as not do "
    "does did can could would should will shall may might must let one two three".split())


def _norm_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def similarity(a: str, b: str) -> float:
    """difflib ratio over normalised word lists (1.0 = the same words in the same order)."""
    wa, wb = _norm_words(a), _norm_words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def changed(reference: str, candidate: str) -> bool:
    return similarity(reference, candidate) < CHANGED_BELOW


def taught_terms(taught: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """Names and numbers of the taught answers (lower case) that ``exclude`` texts lack."""
    seen: set[str] = set()
    for text in exclude:
        seen.update(_norm_words(text))
    terms: set[str] = set()
    for text in taught:
        for raw in re.findall(r"[\w'-]+", text):
            word = raw.lower().strip("'-")
            if len(word) < 2 or word in COMMON or word in seen:
                continue
            if any(ch.isdigit() for ch in word) or raw[:1].isupper():
                terms.add(word)
    return sorted(terms)


def leaked(question: str, reference: str, candidate: str, terms: Sequence[str]) -> list[str]:
    """The taught terms in ``candidate`` that neither ``question`` nor ``reference`` holds."""
    have = set(_norm_words(candidate))
    known = set(_norm_words(question)) | set(_norm_words(reference))
    return [t for t in terms if t in have and t not in known]


@dataclass(frozen=True)
class AnswerChange:
    """One question answered by the reference and by the candidate."""

    question: str
    reference: str
    candidate: str
    similarity: float
    changed: bool
    leaked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(questions: Sequence[str], reference: Sequence[str], candidate: Sequence[str],
            terms: Sequence[str] = ()) -> list[AnswerChange]:
    rows = []
    for q, r, c in zip(questions, reference, candidate, strict=True):
        sim = similarity(r, c)
        rows.append(AnswerChange(q, r, c, round(sim, 3), sim < CHANGED_BELOW,
                                 tuple(leaked(q, r, c, terms))))
    return rows


def summary(rows: Sequence[AnswerChange], terms: Sequence[str] = ()) -> dict[str, Any]:
    """The gate's ``behaviour`` / ``recent`` score block (JSON-ready)."""
    return {"total": len(rows), "changed": sum(r.changed for r in rows),
            "leaks": sum(bool(r.leaked) for r in rows), "terms": list(terms),
            "mean_similarity": round(sum(r.similarity for r in rows) / len(rows), 3)
            if rows else None,
            "rows": [r.to_dict() for r in rows]}
