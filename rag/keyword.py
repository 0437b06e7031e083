"""Keyword side of hybrid retrieval: Okapi BM25 (statistics from rank-bm25) over an inverted index.

Terms come from :mod:`rag.analysis` (folded, stemmed per detected language, stop words dropped,
codes and numbers whole and exact). A chunk's terms are computed once, at ingest, and stored with
the analyzer version in its Chroma metadata (:func:`stored_terms`); the index is built from them.

Invariants:

- A query is scored per *unit* (one word, or one code or code part) of
  :func:`rag.analysis.analyze_query`: a document scores a unit by its **best** alternative (the
  stem, the surface form, ...), never by their sum, so one word never counts twice.
- ``coverage`` is the idf-weighted share of the query's units a document holds; a unit weighs the
  largest idf among its alternatives the corpus knows (an unknown unit weighs as the rarest term).
  Stop words are no units, so an unrelated chunk cannot reach ``[rag] min_keyword_score`` through
  "de", "que", "the".
- Terms analysed by another ``ANALYZER_VERSION`` are never mixed into an index: they are
  recomputed from the text, which gives exactly the terms a fresh ingest or a reindex stores.
- Scoring walks only the postings of the query's terms (microseconds, not a pass over the corpus).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.analysis import ANALYZER_VERSION, STOPWORDS, analyze, analyze_query, fold
from rag.chunking import embed_text

#: Chunk metadata keys: the space-separated terms and the analyzer version that made them.
TERMS_KEY = "terms"
ANALYZER_KEY = "analyzer"
_WORD = re.compile(r"\w+")


def keyword_text(name: str, section: str, text: str) -> str:
    """What is keyword-indexed for a chunk: its file name without extension, section, text."""
    return f"{Path(name).stem} {embed_text(text, section)}"


def chunk_terms(name: str, section: str, text: str) -> list[str]:
    return analyze(keyword_text(name, section, text))


def terms_metadata(name: str, section: str, text: str) -> dict[str, str]:
    """The metadata entries that store a chunk's terms (terms never contain whitespace)."""
    return {TERMS_KEY: " ".join(chunk_terms(name, section, text)), ANALYZER_KEY: ANALYZER_VERSION}


def stored_terms(meta: Mapping[str, Any], text: str) -> tuple[list[str], bool]:
    """A chunk's terms from its metadata, or recomputed when they are missing or were made by
    another analyzer version; the flag says whether they were recomputed."""
    if meta.get(ANALYZER_KEY) == ANALYZER_VERSION and isinstance(meta.get(TERMS_KEY), str):
        return str(meta[TERMS_KEY]).split(), False
    return chunk_terms(str(meta.get("name", "")), str(meta.get("section", "")), text), True


def word_set(text: str) -> set[str]:
    """Folded words without stop words: cheap, for near-duplicate overlap."""
    return {w for w in _WORD.findall(fold(text)) if w not in STOPWORDS}


@dataclass(frozen=True, slots=True)
class KeywordHit:
    doc: int  # index of the document in the list the index was built from
    score: float  # BM25
    coverage: float  # idf-weighted share of the query's units the document holds, in [0, 1]


class KeywordIndex:
    """BM25 over a fixed list of analysed documents; rebuild it when the documents change."""

    def __init__(self, terms: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.size = len(terms)
        self.k1, self.b = k1, b
        self._postings: dict[str, tuple[Any, Any]] = {}
        self.idf: dict[str, float] = {}
        if not terms:
            return
        import numpy as np
        from rank_bm25 import BM25Okapi

        bm = BM25Okapi([list(t) or ["\x00"] for t in terms], k1=k1, b=b)
        self.idf = dict(bm.idf)
        self._avgdl = float(bm.avgdl) or 1.0
        self._doc_len = np.asarray(bm.doc_len, dtype=np.float32)
        lists: dict[str, tuple[list[int], list[int]]] = {}
        for i, freqs in enumerate(bm.doc_freqs):
            for term, tf in freqs.items():
                idx, tfs = lists.setdefault(term, ([], []))
                idx.append(i)
                tfs.append(tf)
        self._postings = {t: (np.asarray(ix, dtype=np.int64), np.asarray(tf, dtype=np.float32))
                          for t, (ix, tf) in lists.items()}

    @classmethod
    def of_texts(cls, docs: Sequence[str]) -> KeywordIndex:
        """An index of raw texts (analysed here, language detected per paragraph)."""
        return cls([analyze(d) for d in docs])

    def _unknown_idf(self) -> float:
        return math.log(self.size + 0.5) - math.log(0.5)

    def _term_scores(self, term: str) -> tuple[Any, Any]:
        idx, tf = self._postings[term]
        denom = tf + self.k1 * (1 - self.b + self.b * self._doc_len[idx] / self._avgdl)
        return idx, self.idf.get(term, 0.0) * tf * (self.k1 + 1) / denom

    def search(self, query: str, k: int) -> list[KeywordHit]:
        """Best ``k`` documents holding at least one unit of the query, by BM25 score."""
        groups = analyze_query(query)
        if not groups or not self.size:
            return []
        import numpy as np

        scores = np.zeros(self.size, dtype=np.float32)
        matched = np.zeros(self.size, dtype=np.float32)
        best = np.zeros(self.size, dtype=np.float32)
        total = 0.0
        for group in groups:
            known = [t for t in group if t in self._postings]
            weight = max(max((self.idf[t] for t in known), default=self._unknown_idf()), 0.05)
            total += weight
            if not known:
                continue
            if len(known) == 1:
                idx, part = self._term_scores(known[0])
            else:  # best alternative per document
                pieces = [self._term_scores(t) for t in known]
                idx = np.unique(np.concatenate([p[0] for p in pieces]))
                for ix, sc in pieces:
                    np.maximum.at(best, ix, sc)
                part = best[idx].copy()
                best[idx] = 0.0
            scores[idx] += part
            matched[idx] += weight
        hits = np.nonzero(matched)[0]
        if not len(hits):
            return []
        order = hits[np.argsort(-scores[hits], kind="stable")][:k]
        return [KeywordHit(int(i), float(scores[i]), float(matched[i] / total)) for i in order]
