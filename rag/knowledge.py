"""The knowledge base: ingestion with bookkeeping, and hybrid retrieval that cites.

Chunks live in Chroma (embedded ``PersistentClient`` under ``<storage>/chroma`` or a server via
``[rag] chroma_url``); one record per source lives in SQLite (``kb_sources``). Retrieval fuses dense
vectors and BM25 with reciprocal rank fusion, keeps only passages above the relevance thresholds,
drops near-duplicates and fits the context token budget. Blocking work runs in threads.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm.threads import torch_serial_executor
from rag.base import Embedder, IngestResult, Passage
from rag.chunking import Chunk, Chunker
from rag.errors import KnowledgeError
from rag.extract import Skip, extract, read_file, size_limit_reason
from rag.keyword import KeywordIndex, tokenize

if TYPE_CHECKING:
    from data.rows import KbSource
    from data.store import Store
    from rag.config import KnowledgeSettings, RagConfig

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_FLAG = "rag.sample_ingested"
RRF_K = 60
ADD_BATCH = 256
DUPLICATE_JACCARD = 0.8


@dataclass
class _Mirror:
    """In-memory copy of the chunks (rebuilt when the store changes): the BM25 index, and the
    vectors for exact dense search while the store is at most ``[rag] exact_search_max``."""

    ids: list[str]
    texts: list[str]
    metas: list[dict[str, Any]]
    index: KeywordIndex
    vectors: Any = None  # torch (n, dim) float32, or None: use Chroma's HNSW index
    pos: dict[str, int] = field(default_factory=dict)  # chunk id -> row


def embed_text(text: str, section: str) -> str:
    """What is embedded (and keyword-indexed) for a chunk: its section path, then its text."""
    return f"{section}\n{text}" if section else text


def safe_name(name: str, default: str = "upload") -> str:
    """A file name safe to store: no folders, controls, or odd characters; extension kept."""
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"[^\w.\- ()+]", "_", name, flags=re.UNICODE).strip(" .")
    name = re.sub(r"_{2,}", "_", name)
    if not name or set(name) <= {"_"}:
        name = default
    stem, ext = os.path.splitext(name)
    return stem[:100] + ext[:12]


class Knowledge:
    """:class:`rag.base.KnowledgeBase` on Chroma + SQLite. Create with :func:`open_knowledge`."""

    def __init__(self, cfg: RagConfig, storage: Path, store: Store, embedder: Embedder,
                 client: Any, collection: Any, chunker: Chunker) -> None:
        self.cfg = cfg
        self.storage = storage
        self.store = store
        self.embedder = embedder
        self.client = client
        self.collection = collection
        self.chunker = chunker
        self.uploads_dir = storage / "uploads"
        self._write_lock = asyncio.Lock()
        # searches run here: one thread whose torch ops (the exact vector search) never start an
        # OpenMP pool next to the chat model's (see llm.threads)
        self._search_thread = torch_serial_executor("nightowl-search")
        self._mirror_lock = asyncio.Lock()
        self._mirror: _Mirror | None = None
        self._signature: tuple[int, float, int] | None = None
        self._stale_warned = False
        meta = collection.metadata or {}
        self.indexed_with: str = str(meta.get("embedding_model", embedder.name))

    # ---- status ------------------------------------------------------------------------------
    @property
    def needs_reindex(self) -> bool:
        """True when the stored vectors come from another model than the configured one."""
        return self.indexed_with != self.embedder.name

    async def count(self) -> int:
        return int(await asyncio.to_thread(self.collection.count))

    async def sources(self) -> list[KbSource]:
        return await self.store.kb_sources()

    async def aclose(self) -> None:
        self._mirror = None
        self._search_thread.shutdown(wait=False)

    async def __aenter__(self) -> Knowledge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- ingestion ---------------------------------------------------------------------------
    def _max_bytes(self) -> int:
        return int(self.cfg.max_file_mb * 1024 * 1024)

    @staticmethod
    def expand(paths: Sequence[Path | str], globs: Sequence[str] = ()) -> list[Path]:
        """Files under ``paths`` (folders recursively, hidden entries skipped), glob-filtered."""
        out: list[Path] = []
        for raw in paths:
            p = Path(raw).expanduser()
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    rel = f.relative_to(p)
                    if f.is_file() and not any(part.startswith(".") for part in rel.parts) and (
                            not globs or any(fnmatch.fnmatch(f.name, g)
                                             or fnmatch.fnmatch(str(rel), g) for g in globs)):
                        out.append(f)
            else:
                out.append(p)
        return out

    async def ingest(self, paths: Sequence[Path], *, by: str = "cli",
                     progress: Callable[[IngestResult], None] | None = None,
                     globs: Sequence[str] = ()) -> list[IngestResult]:
        """Ingest files and folders; one result per file, a bad file never stops the others."""
        results = []
        for path in self.expand(paths, globs):
            res = await self.ingest_file(path, by=by)
            results.append(res)
            if progress is not None:
                progress(res)
        return results

    async def ingest_file(self, path: Path, *, by: str = "cli") -> IngestResult:
        source = str(path.resolve()) if path.exists() else str(path)
        if not path.exists():
            return IngestResult(source, "skipped", reason="not found")
        if not path.is_file():
            return IngestResult(source, "skipped", reason="not a regular file")
        try:
            data = await asyncio.to_thread(read_file, path, self._max_bytes())
        except Skip as skip:
            return IngestResult(source, "skipped", reason=skip.reason)
        return await self._ingest_data(source, path.name, data, by)

    async def ingest_bytes(self, name: str, data: bytes, *, by: str) -> IngestResult:
        """A chat upload: sanitized name, saved under ``<storage>/uploads/<uploader>/``."""
        clean = safe_name(name)
        folder = self.uploads_dir / safe_name(by, "unknown")
        path = (folder / clean).resolve()
        if not path.is_relative_to(self.uploads_dir.resolve()):
            return IngestResult(clean, "skipped", reason="refused: path outside the uploads folder")
        reason = size_limit_reason(len(data), self._max_bytes())
        if reason:
            return IngestResult(clean, "skipped", reason=reason)
        res = await self._ingest_data(str(path), clean, data, by)
        if res.status in ("added", "replaced"):
            await asyncio.to_thread(_write_atomic, path, data)
        return IngestResult(clean, res.status, res.chunks, res.reason)

    async def ingest_path(self, path: str, *, by: str) -> IngestResult:
        """Ingest a server-side path named in chat: only inside ``[rag] upload_roots``."""
        p = Path(path).expanduser().resolve()
        roots = [Path(r).expanduser().resolve() for r in self.cfg.upload_roots]
        if not any(p.is_relative_to(r) for r in roots):
            return IngestResult(path, "skipped",
                                reason="refused: outside the allowed folders ([rag] upload_roots)")
        return await self.ingest_file(p, by=by)

    def _prepare(self, name: str, data: bytes) -> list[Chunk]:
        doc = extract(name, data, self._max_bytes())
        chunks = self.chunker.chunk(doc)
        if not chunks:
            raise Skip("empty")
        return chunks

    async def _ingest_data(self, source: str, name: str, data: bytes, by: str) -> IngestResult:
        digest = hashlib.sha256(data).hexdigest()
        async with self._write_lock:
            record = await self.store.kb_source(source)
            if record and record.content_hash == digest:
                stored = await asyncio.to_thread(self._chunk_ids, source)
                if len(stored) == record.chunks:
                    return IngestResult(source, "unchanged", record.chunks)
            try:
                chunks = await asyncio.to_thread(self._prepare, name, data)
            except Skip as skip:
                return IngestResult(source, "skipped", reason=skip.reason)
            except Exception as exc:  # a broken file must never stop a batch
                log.warning("extracting %s failed", source, exc_info=True)
                return IngestResult(source, "skipped",
                                    reason=f"unreadable: {type(exc).__name__}: {exc}")
            try:
                await asyncio.to_thread(self._write_chunks, source, name, digest, by, chunks)
            except Exception as exc:
                log.error("storing %s failed", source, exc_info=True)
                await asyncio.to_thread(self._drop_partial, source, digest)
                return IngestResult(source, "skipped", reason=f"not stored ({type(exc).__name__}: "
                                    f"{exc}); the previous version, if any, is kept")
            await self.store.kb_upsert_source(source, digest, len(data), len(chunks), by)
            self._signature = None
        return IngestResult(source, "replaced" if record else "added", len(chunks))

    def _drop_partial(self, source: str, digest: str) -> None:
        """Remove chunks of a failed write (the record still names the previous version)."""
        try:
            self.collection.delete(where={"$and": [{"source": source},
                                                   {"content_hash": digest}]})
        except Exception:
            log.warning("could not clean up a failed write of %s", source, exc_info=True)

    def _chunk_ids(self, source: str) -> list[str]:
        return list(self.collection.get(where={"source": source}, include=[])["ids"])

    def _write_chunks(self, source: str, name: str, digest: str, by: str,
                      chunks: list[Chunk]) -> None:
        """Add the new chunks, then delete the old ones: a crash leaves old, or old + new."""
        key = hashlib.sha1(source.encode()).hexdigest()[:16]
        ids = [f"{key}:{digest[:12]}:{i}" for i in range(len(chunks))]
        metas: list[dict[str, Any]] = [
            {"source": source, "name": name, "section": c.section, "content_hash": digest,
             "idx": i, "tokens": c.tokens, "by": by} for i, c in enumerate(chunks)]
        for start in range(0, len(chunks), ADD_BATCH):
            part = chunks[start: start + ADD_BATCH]
            vecs = self.embedder.embed([embed_text(c.text, c.section) for c in part])
            self.collection.upsert(ids=ids[start: start + ADD_BATCH], embeddings=vecs,
                                   documents=[c.text for c in part],
                                   metadatas=metas[start: start + ADD_BATCH])
        self.collection.delete(where={"$and": [{"source": source},
                                               {"content_hash": {"$ne": digest}}]})

    async def remove(self, source: str) -> bool:
        """Remove a source by its full name or its file name (if unambiguous)."""
        key = await self._resolve_source(source)
        if key is None:
            return False
        async with self._write_lock:
            await asyncio.to_thread(self.collection.delete, where={"source": key})
            await self.store.kb_delete_source(key)
            self._signature = None
        upload = Path(key)
        if upload.is_relative_to(self.uploads_dir.resolve()) and upload.is_file():
            upload.unlink()
        return True

    async def _resolve_source(self, source: str) -> str | None:
        rows = await self.store.kb_sources()
        keys = [r.source for r in rows]
        if source in keys:
            return source
        resolved = str(Path(source).expanduser().resolve())
        if resolved in keys:
            return resolved
        named = [k for k in keys if Path(k).name == source]
        if len(named) > 1:
            raise KnowledgeError(f"{source!r} matches {len(named)} sources; give the full name "
                                 "from `nightowl kb list`: " + ", ".join(named))
        return named[0] if named else None

    async def remove_by_uploader(self, by: str) -> list[str]:
        """Remove every source ingested by ``by`` (e.g. ``telegram:42``); for /forget."""
        removed = []
        for row in await self.store.kb_sources(ingested_by=by):
            if await self.remove(row.source):
                removed.append(Path(row.source).name)
        return removed

    # ---- reindex -----------------------------------------------------------------------------
    async def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every chunk with the configured embedder into a fresh collection, then swap."""
        async with self._write_lock:
            count = await asyncio.to_thread(self._reindex, progress)
            self.indexed_with = self.embedder.name
            self._signature = None
            self._stale_warned = False
            return count

    def _reindex(self, progress: Callable[[int, int], None] | None) -> int:
        from rag.chroma import iter_all, open_collection

        ids: list[str] = []
        docs: list[str] = []
        metas: list[dict[str, Any]] = []
        for page in iter_all(self.collection, ["documents", "metadatas"]):
            ids += page["ids"]
            docs += page["documents"]
            metas += page["metadatas"]
        name = self.cfg.collection
        tmp = f"{name}-reindex"
        try:
            self.client.delete_collection(tmp)
        except Exception:
            pass
        new = open_collection(self.client, tmp, self.embedder, self.cfg.embedding_dtype)
        if progress is not None:
            progress(0, len(ids))
        for start in range(0, len(ids), ADD_BATCH):
            end = start + ADD_BATCH
            vecs = self.embedder.embed([embed_text(d, str(m.get("section", "")))
                                        for d, m in zip(docs[start:end], metas[start:end],
                                                        strict=True)])
            new.add(ids=ids[start:end], embeddings=vecs, documents=docs[start:end],
                    metadatas=metas[start:end])
            if progress is not None:
                progress(min(end, len(ids)), len(ids))
        self.client.delete_collection(name)
        new.modify(name=name)
        self.collection = open_collection(self.client, name, self.embedder,
                                          self.cfg.embedding_dtype)
        return len(ids)

    # ---- retrieval ---------------------------------------------------------------------------
    async def _current_mirror(self) -> _Mirror:
        signature = await self.store.kb_signature()
        async with self._mirror_lock:
            if self._mirror is None or signature != self._signature:
                self._mirror = await asyncio.to_thread(self._load_mirror)
                self._signature = signature
            return self._mirror

    def _load_mirror(self) -> _Mirror:
        from rag.chroma import iter_all

        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        import numpy as np

        exact = 0 < self.collection.count() <= self.cfg.exact_search_max
        include = ["documents", "metadatas"] + (["embeddings"] if exact else [])
        vecs = []
        for page in iter_all(self.collection, include):
            ids += page["ids"]
            texts += page["documents"]
            metas += page["metadatas"]
            if exact:
                vecs.append(np.asarray(page["embeddings"], dtype=np.float32))
        index = KeywordIndex([
            f"{Path(str(m.get('name', ''))).stem} {embed_text(t, str(m.get('section', '')))}"
            for t, m in zip(texts, metas, strict=True)] if self.cfg.hybrid else [])
        vectors = None
        if exact and vecs:
            import torch

            vectors = torch.from_numpy(np.ascontiguousarray(np.concatenate(vecs)))
        return _Mirror(ids, texts, metas, index, vectors, {c: i for i, c in enumerate(ids)})

    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        """Relevant passages, best first; empty when nothing passes the thresholds."""
        query = query.strip()
        if not query:
            return []
        mirror = await self._current_mirror()
        dense_ok = not self.needs_reindex
        if not dense_ok and not self._stale_warned:
            self._stale_warned = True
            log.warning("the knowledge base was indexed with %r but [rag] embedding_model is %r: "
                        "using keyword search only until you run `nightowl kb reindex`",
                        self.indexed_with, self.embedder.name)
        return await asyncio.get_running_loop().run_in_executor(
            self._search_thread, self._search, query, k or self.cfg.top_k, mirror, dense_ok)

    def _search(self, query: str, k: int, mirror: _Mirror, dense_ok: bool
                ) -> list[Passage]:
        n_cand = max(4 * k, 20)
        cands: dict[str, dict[str, Any]] = {}
        qvec: list[float] | None = None
        if dense_ok:
            embed_query = getattr(self.embedder, "embed_query", None)
            qvec = embed_query(query) if embed_query else self.embedder.embed([query])[0]
            for rank, (cid, doc, meta, sim) in enumerate(self._dense(qvec, n_cand, mirror)):
                cands[cid] = {"text": doc, "meta": meta, "dense": sim,
                              "rrf": 1.0 / (RRF_K + rank + 1)}
        if self.cfg.hybrid:
            for rank, (i, _score, coverage) in enumerate(mirror.index.search(query, n_cand)):
                cid = mirror.ids[i]
                c = cands.setdefault(cid, {"text": mirror.texts[i], "meta": mirror.metas[i],
                                           "dense": None, "rrf": 0.0})
                c["kw"] = coverage
                # Weighted by coverage: matching only a common word barely moves the ranking.
                c["rrf"] += coverage / (RRF_K + rank + 1)
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
        return self._select(kept, k)

    def _dense(self, qvec: list[float], n: int, mirror: _Mirror
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
        res = self.collection.query(query_embeddings=[qvec], n_results=n,
                                    include=["documents", "metadatas", "distances"])
        return [(cid, doc, meta, 1.0 - float(dist)) for cid, doc, meta, dist in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0],
            strict=True)]

    def _fill_dense(self, cands: dict[str, dict[str, Any]], qvec: list[float],
                    mirror: _Mirror) -> None:
        """Vector similarity of keyword hits the dense top-n missed, so thresholds compare
        like with like (a keyword hit is not dropped just because many chunks are similar)."""
        missing = [cid for cid, c in cands.items() if c["dense"] is None]
        if not missing:
            return
        import numpy as np

        if mirror.vectors is not None:
            q = np.asarray(qvec, dtype=np.float32)
            for cid in missing:
                if cid in mirror.pos:
                    cands[cid]["dense"] = float(mirror.vectors[mirror.pos[cid]].numpy() @ q)
            return
        got = self.collection.get(ids=missing, include=["embeddings"])
        q = np.asarray(qvec, dtype=np.float32)
        for cid, emb in zip(got["ids"], got["embeddings"], strict=True):
            cands[cid]["dense"] = float(np.asarray(emb, dtype=np.float32) @ q)

    def _select(self, kept: list[tuple[float, float, str, dict[str, Any]]], k: int
                ) -> list[Passage]:
        """Drop near-duplicates (MMR-like) and fit the context token budget."""
        chosen: list[Passage] = []
        seen: list[set[str]] = []
        budget = self.cfg.context_tokens
        used = 0
        for _rrf, score, cid, c in kept:
            if len(chosen) >= k:
                break
            words = set(tokenize(c["text"]))
            if any(len(words & s) / max(len(words | s), 1) >= DUPLICATE_JACCARD for s in seen):
                continue
            meta = c["meta"]
            tokens = int(meta.get("tokens", 0)) or len(c["text"]) // 4
            if used + tokens > budget:
                if chosen:
                    continue
                c = {**c, "text": self._truncate(c["text"], budget)}
                if not c["text"]:
                    break
                tokens = budget
            used += tokens
            seen.append(words)
            chosen.append(Passage(text=c["text"], source=str(meta.get("name", "")),
                                  section=str(meta.get("section", "")), score=score,
                                  chunk_id=cid))
        return chosen

    def _truncate(self, text: str, tokens: int) -> str:
        enc = self.chunker.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= tokens:
            return text
        end = enc.offsets[tokens - 1][1] if tokens > 0 else 0
        return text[:end].rstrip() + " …" if end else ""


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _open_sync(cfg: KnowledgeSettings, store: Store, embedder: Embedder | None) -> Knowledge:
    from rag.chroma import make_client, open_collection
    from rag.embedder import (
        EMBEDDED,
        SentenceTransformerEmbedder,
        embedded_model_dir,
        make_embedder,
    )

    rag = cfg.rag
    storage = cfg.storage.path.resolve()
    os.environ.setdefault("HF_HOME", str(storage / "hf"))
    if embedder is None:
        embedder = make_embedder(rag.embedding_model, rag.embedding_dtype)
    tok, chunk_tokens = None, rag.chunk_tokens
    if isinstance(embedder, SentenceTransformerEmbedder):
        tok = embedder.tokenizer_file()
        # Never cut chunks longer than the model reads (128 tokens for some multilingual ones).
        chunk_tokens = max(16, min(chunk_tokens, embedder.max_tokens - 16))
        if chunk_tokens < rag.chunk_tokens:
            log.info("chunks limited to %d tokens: %s reads at most %d", chunk_tokens,
                     embedder.name, embedder.max_tokens)
    chunker = Chunker(tok or embedded_model_dir() / "tokenizer.json", chunk_tokens,
                      min(rag.chunk_overlap, chunk_tokens // 4))
    client = make_client(rag.chroma_url, storage / "chroma")
    collection = open_collection(client, rag.collection, embedder, rag.embedding_dtype)
    kb = Knowledge(rag, storage, store, embedder, client, collection, chunker)
    if kb.needs_reindex and collection.count() == 0:
        kb.indexed_with = embedder.name
    log.info("knowledge base %s: %s, embedder %s", rag.collection,
             rag.chroma_url or storage / "chroma", embedder.name if embedder.name != EMBEDDED
             else "embedded all-MiniLM-L6-v2")
    return kb


async def open_knowledge(cfg: KnowledgeSettings, store: Store, embedder: Embedder | None = None
                         ) -> Knowledge:
    """Open the knowledge base (loads the embedder and Chroma in a thread).

    ``[rag] embedding_model = "fake"`` uses the deterministic :class:`rag.fake.HashEmbedder`.
    """
    try:
        return await asyncio.to_thread(_open_sync, cfg, store, embedder)
    except KnowledgeError:
        raise
    except Exception as exc:
        raise KnowledgeError(f"cannot open the knowledge base: {type(exc).__name__}: {exc}. "
                             "Check [rag] in config.toml (chroma_url, embedding_model).") from exc


async def ensure_sample(kb: Knowledge, *, force: bool = False) -> list[IngestResult]:
    """Ingest the shipped user guide (``rag/sample/``) once, on first run, if enabled."""
    if not force and (not kb.cfg.sample_on_first_run or await kb.store.kv_get(SAMPLE_FLAG)):
        return []
    if not force and await kb.store.kb_sources():
        await kb.store.kv_set(SAMPLE_FLAG, "skipped: knowledge base not empty")
        return []
    results = await kb.ingest([SAMPLE_DIR], by="sample")
    await kb.store.kv_set(SAMPLE_FLAG, "done")
    return results
