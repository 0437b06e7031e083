"""Writing the knowledge base: files → extraction → chunks → embeddings → Chroma + source records.

Invariants:

- One lock serialises every write (ingest, remove, reindex); searches never wait for it.
- Every file yields one :class:`IngestResult`; a bad file never stops the others.
- A source's new chunks are added before its old ones are deleted, so a crash leaves the old
  version, or old + new; its SQLite record (``kb_sources``) is written last and names a version
  whose chunks are all stored. A failed write removes its partial chunks and keeps the record.
- A file whose content hash is recorded and whose chunks are all present is not embedded again.
- Chat uploads are stored only under ``<storage>/uploads/<uploader>/`` with a sanitised name,
  written (atomically) only once their chunks are stored.
- Every chunk is stored with its keyword terms and the analyzer version that made them
  (:func:`rag.keyword.terms_metadata`); reindex recomputes them with the current analyzer.
- Reindex embeds every chunk into a fresh collection and switches to it only when complete; the
  old one is deleted after the switch (:meth:`rag.chroma.ChunkCollection.rebuild`).
- After every write ``on_change`` is called, so search never serves a mirror of an older store.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.files import write_atomic
from rag.base import Embedder, IngestResult
from rag.chroma import ChunkCollection
from rag.chunking import Chunk, Chunker, embed_text
from rag.errors import KnowledgeError
from rag.extract import Limits, Skip, extract, read_file, size_limit_reason
from rag.keyword import terms_metadata

if TYPE_CHECKING:
    from data.store import Store
    from rag.config import RagConfig

log = logging.getLogger(__name__)

ADD_BATCH = 256  # chunks embedded and written per Chroma call


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


def expand_with_roots(paths: Sequence[Path | str], globs: Sequence[str] = ()
                      ) -> list[tuple[Path, Path | None]]:
    """Files under ``paths`` (folders recursively, hidden entries skipped), glob-filtered, each
    with the folder it was found in (None: named directly)."""
    out: list[tuple[Path, Path | None]] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts) and (
                        not globs or any(fnmatch.fnmatch(f.name, g)
                                         or fnmatch.fnmatch(str(rel), g) for g in globs)):
                    out.append((f, p))
        else:
            out.append((p, None))
    return out


def escapes(path: Path, root: Path | None) -> bool:
    """A file found in a folder that is a symlink to something outside that folder."""
    if root is None or not path.is_symlink():
        return False
    return not path.resolve().is_relative_to(root.resolve())


class Ingestion:
    """Every write to the knowledge base: ingest, remove, reindex."""

    def __init__(self, cfg: RagConfig, storage: Path, store: Store, embedder: Embedder,
                 chunker: Chunker, chunks: ChunkCollection, on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.chunks = chunks
        self.uploads_dir = storage / "uploads"
        self._on_change = on_change
        self._lock = asyncio.Lock()

    def _max_bytes(self) -> int:
        return int(self.cfg.max_file_mb * 1024 * 1024)

    # ---- ingest ------------------------------------------------------------------------------
    async def ingest(self, paths: Sequence[Path], *, by: str = "cli",
                     progress: Callable[[IngestResult], None] | None = None,
                     globs: Sequence[str] = ()) -> list[IngestResult]:
        """Ingest files and folders; one result per file, a bad file never stops the others."""
        results = []
        for path, root in expand_with_roots(paths, globs):
            if escapes(path, root):
                res = IngestResult(str(path), "skipped",
                                   reason="symlink to a file outside the folder (not followed)")
            else:
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
            await asyncio.to_thread(write_atomic, path, data)
        return IngestResult(clean, res.status, res.chunks, res.reason)

    def _prepare(self, name: str, data: bytes) -> list[Chunk]:
        doc = extract(name, data, self._max_bytes(),
                      Limits(self._max_bytes(), self.cfg.max_pdf_pages, self.cfg.extract_timeout_s))
        chunks = self.chunker.chunk(doc)
        if not chunks:
            raise Skip("empty")
        return chunks

    async def _ingest_data(self, source: str, name: str, data: bytes, by: str) -> IngestResult:
        digest = hashlib.sha256(data).hexdigest()
        async with self._lock:
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
            self._on_change()
        return IngestResult(source, "replaced" if record else "added", len(chunks))

    def _drop_partial(self, source: str, digest: str) -> None:
        """Remove chunks of a failed write (the record still names the previous version)."""
        try:
            self.chunks.collection.delete(where={"$and": [{"source": source},
                                                          {"content_hash": digest}]})
        except Exception:
            log.warning("could not clean up a failed write of %s", source, exc_info=True)

    def _chunk_ids(self, source: str) -> list[str]:
        return list(self.chunks.collection.get(where={"source": source}, include=[])["ids"])

    def _write_chunks(self, source: str, name: str, digest: str, by: str,
                      chunks: list[Chunk]) -> None:
        """Add the new chunks, then delete the old ones: a crash leaves old, or old + new."""
        key = hashlib.sha1(source.encode()).hexdigest()[:16]
        ids = [f"{key}:{digest[:12]}:{i}" for i in range(len(chunks))]
        metas: list[dict[str, Any]] = [
            {"source": source, "name": name, "section": c.section, "content_hash": digest,
             "idx": i, "tokens": c.tokens, "by": by, **terms_metadata(name, c.section, c.text)}
            for i, c in enumerate(chunks)]
        collection = self.chunks.collection
        for start in range(0, len(chunks), ADD_BATCH):
            part = chunks[start: start + ADD_BATCH]
            vecs = self.embedder.embed([embed_text(c.text, c.section) for c in part])
            collection.upsert(ids=ids[start: start + ADD_BATCH], embeddings=vecs,
                              documents=[c.text for c in part],
                              metadatas=metas[start: start + ADD_BATCH])
        collection.delete(where={"$and": [{"source": source},
                                          {"content_hash": {"$ne": digest}}]})

    # ---- remove ------------------------------------------------------------------------------
    async def remove(self, source: str) -> bool:
        """Remove a source by its full name or its file name (if unambiguous)."""
        key = await self._resolve_source(source)
        if key is None:
            return False
        async with self._lock:
            await asyncio.to_thread(self.chunks.collection.delete, where={"source": key})
            await self.store.kb_delete_source(key)
            self._on_change()
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
        async with self._lock:
            count = await asyncio.to_thread(self._reindex, progress)
            self.chunks.indexed_with = self.embedder.name
            self._on_change()
            return count

    def _reindex(self, progress: Callable[[int, int], None] | None) -> int:
        old = self.chunks.read_all()
        total = len(old.ids)

        def fill(new: Any) -> None:
            if progress is not None:
                progress(0, total)
            for start in range(0, total, ADD_BATCH):
                end = start + ADD_BATCH
                docs, metas = old.documents[start:end], old.metadatas[start:end]
                metas = [{**m, **terms_metadata(str(m.get("name", "")), str(m.get("section", "")),
                                                d)} for d, m in zip(docs, metas, strict=True)]
                vecs = self.embedder.embed([embed_text(d, str(m.get("section", "")))
                                            for d, m in zip(docs, metas, strict=True)])
                new.add(ids=old.ids[start:end], embeddings=vecs, documents=docs, metadatas=metas)
                if progress is not None:
                    progress(min(end, total), total)

        self.chunks.rebuild(self.embedder, fill)
        return total
