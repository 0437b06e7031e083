"""Keyword side of hybrid retrieval: Okapi BM25 (statistics from rank-bm25) over an inverted index.

rank-bm25 computes the corpus statistics (idf, document lengths); scoring walks only the postings of
the query's terms, so a query costs microseconds instead of a pass over every document. Tokens are
accent-folded and lower-cased, codes like ``NX-4471`` are kept whole (and also split), and English
and Portuguese stop words are dropped, so exact names, codes and Portuguese words match.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

_TOKEN = re.compile(r"\w+(?:[-_./:]\w+)*", re.UNICODE)
STOPWORDS = frozenset("""
a an and are as at be been but by can could did do does for from had has have how i if in into is it
its me my no not of on or our so than that the their them then there these they this to us was we
were what when where which who why will with would you your yours about after also any all just
more most other some such only own same too very s t don should now am being here out up down off
over under again further once each few both nor own
o os um uma uns umas e ou de do da dos das no na nos nas em por para pelo pela pelos pelas com sem
que se como mais mas ao aos à às é ser são foi está estão eu tu ele ela eles elas nós vós você
vocês meu minha seu sua seus suas isso isto aquilo este esta esse essa qual quais quando onde
porque porquê já não sim muito também lhe lhes me te há ter tem têm faço fazer
""".split())


def fold(text: str) -> str:
    """Lower-case and strip accents (``Configuração`` -> ``configuracao``)."""
    norm = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in norm if not unicodedata.combining(ch))


_STOP = frozenset(fold(w) for w in STOPWORDS)


def tokenize(text: str) -> list[str]:
    out: list[str] = []
    for tok in _TOKEN.findall(fold(text)):
        parts = re.split(r"[-_./:]", tok)
        if len(parts) > 1:
            out.append(tok)
        out += [p for p in parts if p and p not in _STOP]
    return out


class KeywordIndex:
    """BM25 over a fixed list of documents; rebuild it when the documents change."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.size = len(docs)
        self.k1, self.b = k1, b
        self._postings: dict[str, tuple[Any, Any]] = {}
        self.idf: dict[str, float] = {}
        if not docs:
            return
        import numpy as np
        from rank_bm25 import BM25Okapi

        corpus = [tokenize(d) or ["\x00"] for d in docs]
        bm = BM25Okapi(corpus, k1=k1, b=b)
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

    def _unknown_idf(self) -> float:
        return math.log(self.size + 0.5) - math.log(0.5)

    def search(self, query: str, k: int) -> list[tuple[int, float, float]]:
        """Best ``k`` documents: ``(doc index, bm25 score, coverage)``.

        ``coverage`` in [0, 1] is the idf-weighted share of the query's terms the document
        contains (terms unknown to the corpus weigh as the rarest): an unrelated question has
        low coverage even when it shares a common word.
        """
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or not self.size:
            return []
        import numpy as np

        scores = np.zeros(self.size, dtype=np.float32)
        matched = np.zeros(self.size, dtype=np.float32)
        total = 0.0
        for term in terms:
            post = self._postings.get(term)
            weight = max(self.idf.get(term, self._unknown_idf()), 0.05)
            total += weight
            if post is None:
                continue
            idx, tf = post
            denom = tf + self.k1 * (1 - self.b + self.b * self._doc_len[idx] / self._avgdl)
            scores[idx] += self.idf.get(term, 0.0) * tf * (self.k1 + 1) / denom
            matched[idx] += weight
        hits = np.nonzero(matched)[0]
        if not len(hits):
            return []
        order = hits[np.argsort(-scores[hits], kind="stable")][:k]
        return [(int(i), float(scores[i]), float(matched[i] / total)) for i in order]
