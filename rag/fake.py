"""Deterministic fakes for fast tests: a hashing embedder and an in-memory retriever with
correction notes (ranked first, like :class:`rag.knowledge.Knowledge`)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from rag.base import CorrectionNote, Passage

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Bag-of-words hashed into ``dim`` buckets, L2-normalized. Same text, same vector."""

    def __init__(self, dim: int = 256) -> None:
        self.name = f"hash-{dim}"
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vec = [0.0] * self.dim
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                vec[h % self.dim] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out


class FakeRetriever:
    """Returns passages whose words overlap the query; for core and platform tests.

    Correction notes match when the query holds at least ``note_coverage`` of their question's
    words (a stand-in for question similarity) and come before the passages, as in the real
    knowledge base; ``notes_enabled=False`` is ``[rag] correction_notes = false``.
    """

    def __init__(self, passages: Sequence[Passage] = (), min_overlap: int = 2, *,
                 notes_enabled: bool = True, note_coverage: float = 0.6) -> None:
        self.passages = list(passages)
        self.min_overlap = min_overlap
        self.notes_enabled = notes_enabled
        self.note_coverage = note_coverage
        self.notes: dict[int, CorrectionNote] = {}
        self.queries: list[str] = []

    async def add_note(self, note: CorrectionNote) -> None:
        if self.notes_enabled and note.question.strip() and note.text.strip():
            self.notes[note.answer_id] = note

    async def remove_note(self, answer_id: int) -> bool:
        return self.notes.pop(answer_id, None) is not None

    async def forget_notes(self, user_id: int) -> int:
        gone = [a for a, n in self.notes.items() if user_id in (n.owner_id, n.corrector_id)]
        for answer_id in gone:
            del self.notes[answer_id]
        return len(gone)

    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        self.queries.append(query)
        q = set(_WORD.findall(query.lower()))

        def overlap(text: str) -> int:
            return len(q & set(_WORD.findall(text.lower())))

        def coverage(n: CorrectionNote) -> float:
            return overlap(n.question) / max(len(set(_WORD.findall(n.question.lower()))), 1)

        notes = sorted(((coverage(n), n) for n in self.notes.values() if self.notes_enabled),
                       key=lambda t: (-t[0], -t[1].at))
        found = [n.passage(c) for c, n in notes if c >= self.note_coverage]
        scored = []
        for p in self.passages:
            o = overlap(p.text)
            if o >= self.min_overlap:
                scored.append((o, p))
        scored.sort(key=lambda t: -t[0])
        return (found + [p for _, p in scored])[: k or 3]
