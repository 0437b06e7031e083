"""Reading the knowledge base: hybrid retrieval (dense vectors + BM25) that cites its passages.

Invariants:

- Search reads an in-memory mirror of every chunk (texts, metadata, the BM25 index and, while the
  store has at most ``[rag] exact_search_max`` chunks, the vectors). The mirror is rebuilt when the
  store's signature (``Store.kb_signature``) changes or a write calls :meth:`Search.invalidate`.
- Dense search is exact over the mirror's vectors when it has them, else Chroma's HNSW index.
- The BM25 index is built from the terms stored with each chunk (:func:`rag.keyword.stored_terms`);
  terms of another analyzer version are recomputed in memory, never mixed.
- Dense and keyword rankings are fused by weighted reciprocal rank fusion (dense weight 1, keyword
  ``keyword_weight`` times the passage's keyword coverage); a passage is kept only if its vector
  similarity reaches ``min_score`` or its keyword coverage ``min_keyword_score`` (no context beats
  wrong context). Near-duplicates are dropped and the result fits ``context_tokens``.
- While the stored vectors come from another model than the configured embedder, search is
  keyword-only (vectors of two models cannot be compared).
- Every search runs on one dedicated thread, whose torch ops never start an OpenMP pool next to
  the chat model's (see ``llm.threads``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm.threads import torch_serial_executor
from rag.base import Embedder, Passage, embed_query
from rag.chroma import ChunkCollection
from rag.chunking import Chunker
from rag.keyword import TERMS_KEY, KeywordIndex, stored_terms, word_set

if TYPE_CHECKING:
    from data.rows import KbSignature
    from data.store import Store
    from rag.config import RagConfig

log = logging.getLogger(__name__)

RRF_K = 60
DUPLICATE_JACCARD = 0.8  # word overlap at which a passage is a near-duplicate of a chosen one


@dataclass
class Mirror:
    """In-memory copy of the chunks: the BM25 index, and the vectors for exact dense search."""

    ids: list[str]
    texts: list[str]
    metas: list[dict[str, Any]]
    index: KeywordIndex
    vectors: Any = None  # torch (n, dim) float32, or None: use Chroma's HNSW index
    pos: dict[str, int] = field(default_factory=dict)  # chunk id -> row


class Search:
    """:class:`rag.base.Retriever` over a :class:`ChunkCollection` and its mirror."""

    def __init__(self, cfg: RagConfig, store: Store, embedder: Embedder, chunker: Chunker,
                 chunks: ChunkCollection) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.chunks = chunks
        self._thread = torch_serial_executor("nightowl-search")
        self._mirror_lock = asyncio.Lock()
        self._mirror: Mirror | None = None
        self._signature: KbSignature | None = None
        self._stale_warned = False

    def invalidate(self) -> None:
        """The store changed: rebuild the mirror before the next search."""
        self._signature = None

    def close(self) -> None:
        self._mirror = None
        self._thread.shutdown(wait=False)

    async def exact(self) -> bool:
        """True when dense search is exact over the mirror's vectors, False when it uses
        Chroma's HNSW index (for the current store)."""
        return (await self._current_mirror()).vectors is not None

    # ---- the mirror --------------------------------------------------------------------------
    async def _current_mirror(self) -> Mirror:
        signature = await self.store.kb_signature()
        async with self._mirror_lock:
            if self._mirror is None or signature != self._signature:
                self._mirror = await asyncio.to_thread(self._load_mirror)
                self._signature = signature
            return self._mirror

    def _load_mirror(self) -> Mirror:
        exact = 0 < self.chunks.count() <= self.cfg.exact_search_max
        rec = self.chunks.read_all(embeddings=exact)
        terms: list[list[str]] = []
        stale = 0
        for text, meta in zip(rec.documents, rec.metadatas, strict=True):
            if self.cfg.hybrid:
                got, redone = stored_terms(meta, text)
                terms.append(got)
                stale += redone
            meta.pop(TERMS_KEY, None)  # not needed once indexed; keeps the mirror small
        if stale:
            log.info("%d chunks were keyword-indexed by another text analyzer: analysed again "
                     "in memory (`nightowl kb reindex` stores the new terms)", stale)
        index = KeywordIndex(terms)
        vectors = None
        if rec.vectors is not None:
            import numpy as np
            import torch

            vectors = torch.from_numpy(np.ascontiguousarray(rec.vectors))
        return Mirror(rec.ids, rec.documents, rec.metadatas, index, vectors,
                      {c: i for i, c in enumerate(rec.ids)})

    # ---- search ------------------------------------------------------------------------------
    async def search(self, query: str, k: int | None = None, *, budget: int | None = None,
                     qvec: list[float] | None = None) -> list[Passage]:
        """Relevant passages, best first; empty when nothing passes the thresholds.

        ``budget`` is the context token budget (default ``[rag] context_tokens``); ``qvec`` the
        query's vector when the caller already has it (:func:`rag.base.embed_query`).
        """
        query = query.strip()
        if not query:
            return []
        mirror = await self._current_mirror()
        dense_ok = self.chunks.indexed_with == self.embedder.name
        if not dense_ok and not self._stale_warned:
            self._stale_warned = True
            log.warning("the knowledge base was indexed with %r but [rag] embedding_model is %r: "
                        "using keyword search only until you run `nightowl kb reindex`",
                        self.chunks.indexed_with, self.embedder.name)
        budget = self.cfg.context_tokens if budget is None else budget
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._search, query, k or self.cfg.top_k, mirror, dense_ok, budget,
            qvec)

    def _search(self, query: str, k: int, mirror: Mirror, dense_ok: bool, budget: int,
                qvec: list[float] | None) -> list[Passage]:
        n_cand = max(4 * k, 20)
        cands: dict[str, dict[str, Any]] = {}
        if dense_ok:
            qvec = qvec if qvec is not None else embed_query(self.embedder, query)
            for rank, (cid, doc, meta, sim) in enumerate(self._dense(qvec, n_cand, mirror)):
                cands[cid] = {"text": doc, "meta": meta, "dense": sim,
                              "rrf": 1.0 / (RRF_K + rank + 1)}
        if self.cfg.hybrid:
            for rank, hit in enumerate(mirror.index.search(query, n_cand)):
                cid = mirror.ids[hit.doc]
                c = cands.setdefault(cid, {"text": mirror.texts[hit.doc],
                                           "meta": mirror.metas[hit.doc], "dense": None,
                                           "rrf": 0.0})
                c["kw"] = hit.coverage
                # Weighted by coverage: matching only a common word barely moves the ranking.
                c["rrf"] += self.cfg.keyword_weight * hit.coverage / (RRF_K + rank + 1)
        if dense_ok and qvec is not None:
            self._fill_dense(cands, qvec, mirror)
        kept = []
        for cid, c in cands.items():
            dense, kw = c["dense"], c.get("kw", 0.0)
            if (dense is not None and dense >= self.cfg.min_score) or (
                    kw >= self.cfg.min_keyword_score):
                score = max(dense if dense is not None else 0.0, kw)
                kept.append((c["rrf"], min(max(score, 0.0), 1.0), cid, c))
        kept.sort(key=lambda t: -t[0])
        return self._select(kept, k, budget)

    def _dense(self, qvec: list[float], n: int, mirror: Mirror
               ) -> list[tuple[str, str, dict[str, Any], float]]:
        """Nearest chunks: exact over the mirror's vectors when it has them (Chroma's HNSW
        misses clear best matches among many similar chunks), else Chroma's index."""
        import numpy as np

        if mirror.vectors is not None:
            import torch

            sims = torch.mv(mirror.vectors, torch.tensor(qvec, dtype=torch.float32)).numpy()
            top = np.argpartition(-sims, n)[:n] if len(sims) > n else np.arange(len(sims))
            top = top[np.argsort(-sims[top], kind="stable")]
            return [(mirror.ids[i], mirror.texts[i], mirror.metas[i], float(sims[i]))
                    for i in top]
        res = self.chunks.collection.query(query_embeddings=[qvec], n_results=n,
                                           include=["documents", "metadatas", "distances"])
        return [(cid, doc, meta, 1.0 - float(dist)) for cid, doc, meta, dist in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0],
            strict=True)]

    def _fill_dense(self, cands: dict[str, dict[str, Any]], qvec: list[float],
                    mirror: Mirror) -> None:
        """Vector similarity of keyword hits the dense top-n missed, so thresholds compare
        like with like (a keyword hit is not dropped just because many chunks are similar)."""
        missing = [cid for cid, c in cands.items() if c["dense"] is None]
        if not missing:
            return
        import numpy as np

        q = np.asarray(qvec, dtype=np.float32)
        if mirror.vectors is not None:
            for cid in missing:
                if cid in mirror.pos:
                    cands[cid]["dense"] = float(mirror.vectors[mirror.pos[cid]].numpy() @ q)
            return
        got = self.chunks.collection.get(ids=missing, include=["embeddings"])
        for cid, emb in zip(got["ids"], got["embeddings"], strict=True):
            cands[cid]["dense"] = float(np.asarray(emb, dtype=np.float32) @ q)

    def _select(self, kept: list[tuple[float, float, str, dict[str, Any]]], k: int,
                budget: int) -> list[Passage]:
        """Drop near-duplicates (MMR-like) and fit the context token budget."""
        chosen: list[Passage] = []
        seen: list[set[str]] = []
        used = 0
        for _rrf, score, cid, c in kept:
            if len(chosen) >= k:
                break
            words = word_set(c["text"])
            if any(len(words & s) / max(len(words | s), 1) >= DUPLICATE_JACCARD for s in seen):
                continue
            meta = c["meta"]
            tokens = int(meta.get("tokens", 0)) or len(c["text"]) // 4
            if used + tokens > budget:
                if chosen:
                    continue
                c = {**c, "text": self.chunker.truncate(c["text"], budget)}
                if not c["text"]:
                    break
                tokens = budget
            used += tokens
            seen.append(words)
            chosen.append(Passage(text=c["text"], source=str(meta.get("name", "")),
                                  section=str(meta.get("section", "")), score=score,
                                  chunk_id=cid))
        return chosen
