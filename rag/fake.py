"""Deterministic fakes for fast tests: a hashing embedder and an in-memory retriever."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from rag.base import Passage

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
    """Returns passages whose words overlap the query; for core and platform tests."""

    def __init__(self, passages: Sequence[Passage] = (), min_overlap: int = 2) -> None:
        self.passages = list(passages)
        self.min_overlap = min_overlap
        self.queries: list[str] = []

    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        self.queries.append(query)
        q = set(_WORD.findall(query.lower()))
        scored = []
        for p in self.passages:
            overlap = len(q & set(_WORD.findall(p.text.lower())))
            if overlap >= self.min_overlap:
                scored.append((overlap, p))
        scored.sort(key=lambda t: -t[0])
        return [p for _, p in scored[: k or 3]]
