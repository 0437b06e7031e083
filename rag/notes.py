"""Correction notes: a correction stored as a retrievable note, so the very next similar question is
answered right before any training (training later moves it into the weights).

Invariants:

- Notes live in their own Chroma collection, ``<[rag] collection>-notes``, on the documents' client
  with the documents' embedder, and persist like them (embedded store or Chroma server). They are
  never in ``kb_sources``: ``kb list`` and the chunk count show documents only.
- One note per corrected answer (record id ``note:<answer_id>``); adding it again replaces it.
- A note's vector is the embedding of its question, compared with the new question: a rephrased
  question stands further apart from a same-shaped question about something else than when the
  answer is embedded too. A note is retrieved only at ``[rag] note_min_score`` or above.
- Every field of a note is kept in its record's metadata, so ``kb reindex`` re-embeds the notes
  from their questions. While the stored vectors come from another model, notes are not retrieved;
  the first write in that state re-embeds them all, so one collection never mixes two models.
- Matching never raises: a missing or broken notes collection yields no notes (logged). Writes
  reopen a collection deleted behind their back (matching never does: it may run while a reindex
  swaps the collection), and one lock serialises them.
- With ``[rag] correction_notes = false`` nothing is stored or retrieved; removing and forgetting
  still delete (a user's /forget never depends on a setting).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rag.base import CorrectionNote, Embedder, Passage, embed_query
from rag.chroma import ChunkCollection
from rag.chunking import Chunker
from rag.errors import KnowledgeError

if TYPE_CHECKING:
    from rag.config import RagConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
NOTES_SUFFIX = "-notes"
CANDIDATES = 4  # notes read per wanted result: room for duplicates and ties


def note_id(answer_id: int) -> str:
    return f"note:{answer_id}"


def note_metadata(note: CorrectionNote) -> dict[str, Any]:
    return {"answer_id": note.answer_id, "owner_id": note.owner_id,
            "corrector_id": note.corrector_id, "question": note.question, "text": note.text,
            "by": note.by, "at": note.at}


def note_from_metadata(meta: dict[str, Any]) -> CorrectionNote:
    return CorrectionNote(answer_id=int(meta["answer_id"]), owner_id=int(meta["owner_id"]),
                          corrector_id=int(meta["corrector_id"]), question=str(meta["question"]),
                          text=str(meta["text"]), by=str(meta["by"]), at=float(meta["at"]))


class Notes:
    """The correction notes collection: writes (async, locked) and matching (blocking)."""

    def __init__(self, cfg: RagConfig, client: Any, embedder: Embedder, chunker: Chunker) -> None:
        self.cfg = cfg
        self.client = client
        self.embedder = embedder
        self.chunker = chunker
        self.name = f"{cfg.collection}{NOTES_SUFFIX}"
        self._notes = self._open()
        self._lock = asyncio.Lock()
        self._stale_warned = False
        self._broken_warned = False

    def _open(self) -> ChunkCollection:
        return ChunkCollection(self.client, self.name, self.embedder, self.cfg.embedding_dtype)

    @property
    def indexed_with(self) -> str:
        return self._notes.indexed_with

    @property
    def stale(self) -> bool:
        """True when the stored note vectors come from another model than the embedder."""
        return self._notes.indexed_with != self.embedder.name

    def count(self) -> int:
        return self._notes.count()

    # ---- writes ------------------------------------------------------------------------------
    async def add(self, note: CorrectionNote) -> None:
        """Store ``note`` (replacing that answer's note); a no-op when notes are off or the
        note has no question or no text (it could never be matched or say anything)."""
        if not self.cfg.correction_notes:
            return
        if not note.question.strip() or not note.text.strip():
            log.info("correction note of answer %d not stored: empty question or text",
                     note.answer_id)
            return
        async with self._lock:
            await asyncio.to_thread(self._write, lambda: self._add(note))

    def _add(self, note: CorrectionNote) -> None:
        if self.stale:
            self._rebuild()
        vec = embed_query(self.embedder, note.question)
        self._notes.collection.upsert(ids=[note_id(note.answer_id)], embeddings=[vec],
                                      documents=[note.passage_text()],
                                      metadatas=[note_metadata(note)])

    async def remove(self, answer_id: int) -> bool:
        """Remove the note of that answer; False when there was none."""
        async with self._lock:
            return await asyncio.to_thread(self._write, lambda: self._delete(
                ids=[note_id(answer_id)])) > 0

    async def forget(self, user_id: int) -> int:
        """Remove every note the user asked or corrected; how many were removed."""
        where = {"$or": [{"owner_id": user_id}, {"corrector_id": user_id}]}
        async with self._lock:
            return await asyncio.to_thread(self._write, lambda: self._delete(where=where))

    def _delete(self, **which: Any) -> int:
        ids = list(self._notes.collection.get(include=[], **which)["ids"])
        if ids:
            self._notes.collection.delete(ids=ids)
        return len(ids)

    async def reindex(self) -> int:
        """Re-embed every note with the configured embedder (``kb reindex``); how many."""
        async with self._lock:
            return await asyncio.to_thread(self._write, self._rebuild)

    def _rebuild(self) -> int:
        old = self._notes.read_all()
        notes = [note_from_metadata(m) for m in old.metadatas]

        def fill(new: Any) -> None:
            if notes:
                new.add(ids=[note_id(n.answer_id) for n in notes],
                        embeddings=[embed_query(self.embedder, n.question) for n in notes],
                        documents=[n.passage_text() for n in notes],
                        metadatas=[note_metadata(n) for n in notes])

        self._notes.rebuild(self.embedder, fill)
        self._notes.indexed_with = self.embedder.name
        return len(notes)

    def _write(self, action: Callable[[], T]) -> T:
        """Run a write; once more on a reopened collection if it was deleted behind our back."""
        from chromadb.errors import NotFoundError

        try:
            try:
                return action()
            except NotFoundError:
                log.warning("the correction notes collection %r was gone; recreated", self.name)
                self._notes = self._open()
                return action()
        except Exception as exc:
            raise KnowledgeError(
                f"cannot write correction notes ({type(exc).__name__}: {exc}). Check that "
                "Chroma is reachable ([rag] chroma_url) and its folder is writable; set "
                "[rag] correction_notes = false to run without notes.") from exc

    # ---- reads -------------------------------------------------------------------------------
    def match(self, qvec: list[float], k: int, budget: int) -> list[Passage]:
        """Up to ``k`` notes for the question's vector, best first (newest first among equal
        scores), within ``budget`` tokens; ``[]`` when off, stale, empty or broken."""
        if not self.cfg.correction_notes or k <= 0 or budget <= 0:
            return []
        if self.stale:
            if not self._stale_warned:
                self._stale_warned = True
                log.warning("correction notes were embedded with %r, not %r: not retrieved "
                            "until `nightowl kb reindex`", self.indexed_with, self.embedder.name)
            return []
        try:
            found = self._nearest(qvec, k * CANDIDATES)
        except Exception as exc:
            # Never recreated here: a reindex may be between deleting the old collection and
            # renaming the new one. The next write reopens a collection that is really gone.
            if not self._broken_warned:
                self._broken_warned = True
                log.warning("correction notes unavailable (%s: %s); answering from documents "
                            "only", type(exc).__name__, exc)
            return []
        self._broken_warned = False
        found.sort(key=lambda t: (-round(t[0], 3), -t[1].at))
        return self._fit(found, k, budget)

    def _nearest(self, qvec: list[float], n: int) -> list[tuple[float, CorrectionNote]]:
        res = self._notes.collection.query(query_embeddings=[qvec], n_results=n,
                                           include=["metadatas", "distances"])
        out = []
        for meta, dist in zip(res["metadatas"][0], res["distances"][0], strict=True):
            score = 1.0 - float(dist)
            if score >= self.cfg.note_min_score:
                out.append((score, note_from_metadata(dict(meta))))
        return out

    def _fit(self, found: list[tuple[float, CorrectionNote]], k: int, budget: int
             ) -> list[Passage]:
        chosen: list[Passage] = []
        used = 0
        for score, note in found:
            if len(chosen) >= k:
                break
            passage = note.passage(score)
            if any(p.text == passage.text for p in chosen):
                continue  # the same correction of two answers
            tokens = self.chunker.count([passage.text])[0]
            if used + tokens > budget:
                if chosen:
                    continue
                text = self.chunker.truncate(passage.text, budget)
                if not text:
                    break
                passage, tokens = Passage(text, passage.source, "", passage.score,
                                          passage.chunk_id), budget
            used += tokens
            chosen.append(passage)
        return chosen
