"""The knowledge base: :class:`Knowledge` (a thin facade), :func:`open_knowledge`, the sample.

Chunks live in Chroma (embedded ``PersistentClient`` under ``<storage>/chroma`` or a server via
``[rag] chroma_url``); one record per source lives in SQLite (``kb_sources``). Writes are
:mod:`rag.ingest`, reads are :mod:`rag.search`; both share one :class:`rag.chroma.ChunkCollection`,
and every write tells search to reload its mirror. Correction notes (:mod:`rag.notes`) are a
second collection on the same client: :meth:`Knowledge.search` puts matching notes first, then
fills the rest of ``k`` and of the context budget with document passages; the question is
embedded once for both. Blocking work runs in threads.

A reindex fills new collections and switches the pointers (:mod:`rag.chroma`); before every
search, count and write, a Knowledge follows pointers switched by another process or instance
(a running bot beside the console's or the CLI's reindex) and rebuilds its search mirror then.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.base import CorrectionNote, Embedder, IngestResult, Passage, embed_query
from rag.chroma import ChunkCollection, make_client
from rag.chunking import Chunker
from rag.errors import KnowledgeError
from rag.ingest import Ingestion
from rag.notes import Notes
from rag.search import Search

if TYPE_CHECKING:
    from data.rows import KbSource
    from data.store import Store
    from rag.config import KnowledgeSettings, RagConfig

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_FLAG = "rag.sample_ingested"


class Knowledge:
    """:class:`rag.base.KnowledgeBase` on Chroma + SQLite. Create with :func:`open_knowledge`."""

    def __init__(self, cfg: RagConfig, storage: Path, store: Store, embedder: Embedder,
                 chunks: ChunkCollection, chunker: Chunker, notes: Notes) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self._chunks = chunks
        self._notes = notes
        self._search = Search(cfg, store, embedder, chunker, chunks)
        self._ingest = Ingestion(cfg, storage, store, embedder, chunker, chunks,
                                 on_change=self._search.invalidate)

    # ---- status ------------------------------------------------------------------------------
    @property
    def indexed_with(self) -> str:
        """The embedding model the stored vectors come from (the notes' if only they differ)."""
        if self._chunks.indexed_with == self.embedder.name and self._notes.stale:
            return self._notes.indexed_with
        return self._chunks.indexed_with

    @property
    def needs_reindex(self) -> bool:
        """True when stored vectors (chunks or notes) come from another model than the
        configured one."""
        return self.indexed_with != self.embedder.name

    @property
    def collection(self) -> Any:
        """The current Chroma collection of chunks (read it; write through this class)."""
        return self._chunks.collection

    async def count(self) -> int:
        await self.follow()
        return await asyncio.to_thread(self._chunks.count)

    async def follow(self) -> bool:
        """Use the collections a reindex elsewhere switched to (chunks and notes); True when
        they changed. Never raises: if Chroma cannot be asked, the current ones stay."""
        changed = await asyncio.to_thread(self._follow)
        if changed:
            self._search.invalidate()
        return changed

    def _follow(self) -> bool:
        try:
            notes = self._notes._notes.follow()
            return self._chunks.follow() or notes
        except Exception as exc:
            log.warning("could not check for a reindexed knowledge base: %s: %s",
                        type(exc).__name__, exc)
            return False

    async def note_count(self) -> int:
        """Number of correction notes stored (never counted as chunks or sources)."""
        return await asyncio.to_thread(self._notes.count)

    async def sources(self) -> list[KbSource]:
        return await self.store.kb_sources()

    async def exact_search(self) -> bool:
        """True when dense search is exact in memory, False when it uses Chroma's HNSW index
        (``[rag] exact_search_max``)."""
        return await self._search.exact()

    async def aclose(self) -> None:
        self._search.close()

    async def __aenter__(self) -> Knowledge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- writes (rag.ingest) -----------------------------------------------------------------
    async def ingest(self, paths: Sequence[Path], *, by: str = "cli",
                     progress: Callable[[IngestResult], None] | None = None,
                     globs: Sequence[str] = ()) -> list[IngestResult]:
        """Ingest files and folders; one result per file, a bad file never stops the others."""
        await self.follow()
        return await self._ingest.ingest(paths, by=by, progress=progress, globs=globs)

    async def ingest_bytes(self, name: str, data: bytes, *, by: str) -> IngestResult:
        """A chat upload: sanitized name, saved under ``<storage>/uploads/<uploader>/``."""
        await self.follow()
        return await self._ingest.ingest_bytes(name, data, by=by)

    async def remove(self, source: str) -> bool:
        """Remove a source by its full name or its file name (if unambiguous)."""
        await self.follow()
        return await self._ingest.remove(source)

    async def remove_by_uploader(self, by: str) -> list[str]:
        """Remove every source ingested by ``by`` (e.g. ``telegram:42``); for /forget."""
        await self.follow()
        return await self._ingest.remove_by_uploader(by)

    async def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every chunk (then every correction note) with the configured embedder into a
        fresh collection, then swap; returns the number of chunks."""
        await self.follow()
        count = await self._ingest.reindex(progress)
        await self._notes.reindex()
        return count

    # ---- correction notes (rag.notes) --------------------------------------------------------
    async def add_note(self, note: CorrectionNote) -> None:
        """Store a correction as a note (replacing that answer's); no-op when notes are off."""
        await self._notes.add(note)

    async def remove_note(self, answer_id: int) -> bool:
        """Remove the note of that answer; False when there was none."""
        return await self._notes.remove(answer_id)

    async def forget_notes(self, user_id: int) -> int:
        """Remove every note the user asked or corrected (for /forget); how many."""
        return await self._notes.forget(user_id)

    # ---- reads (rag.search, rag.notes) -------------------------------------------------------
    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        """Relevant passages, best first: matching correction notes, then document passages;
        at most ``k`` (default ``[rag] top_k``) within ``[rag] context_tokens``."""
        query = query.strip()
        if not query:
            return []
        await self.follow()
        k = k or self.cfg.top_k
        if not self.cfg.correction_notes or self._notes.stale:
            return await self._search.search(query, k)
        qvec, notes, used = await asyncio.to_thread(self._match_notes, query, k)
        if len(notes) >= k:
            return notes
        return notes + await self._search.search(query, k - len(notes),
                                                 budget=self.cfg.context_tokens - used, qvec=qvec)

    def _match_notes(self, query: str, k: int) -> tuple[list[float], list[Passage], int]:
        """The question's vector, its notes, and the context tokens they use."""
        qvec = embed_query(self.embedder, query)
        notes = self._notes.match(qvec, k, self.cfg.context_tokens)
        return qvec, notes, sum(self.chunker.count([p.text for p in notes])) if notes else 0


def _open_sync(cfg: KnowledgeSettings, store: Store, embedder: Embedder | None) -> Knowledge:
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
    chunks = ChunkCollection(client, rag.collection, embedder, rag.embedding_dtype)
    notes = Notes(rag, client, embedder, chunker)
    log.info("knowledge base %s: %s, embedder %s", rag.collection,
             rag.chroma_url or storage / "chroma", embedder.name if embedder.name != EMBEDDED
             else "embedded all-MiniLM-L6-v2")
    return Knowledge(rag, storage, store, embedder, chunks, chunker, notes)


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
