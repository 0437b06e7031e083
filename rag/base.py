"""Contracts of the knowledge base: embedder, retriever, ingestion results, correction notes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from data.rows import KbSource


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk with where it came from."""

    text: str
    source: str  # file name or upload name, e.g. "guide.md"
    section: str  # heading path inside the source, e.g. "Retraining"; "" if none
    score: float  # relevance in [0, 1] (higher is better)
    chunk_id: str

    def label(self) -> str:
        """Short citation label: ``guide.md › Retraining``."""
        return f"{self.source} › {self.section}" if self.section else self.source

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "source": self.source, "section": self.section,
                "score": round(self.score, 4), "chunk_id": self.chunk_id}


NOTE_BY = {"admin": "an admin", "user": "the user"}


@dataclass(frozen=True)
class CorrectionNote:
    """A correction stored as a retrievable note (one per corrected answer)."""

    answer_id: int  # store id of the corrected answer
    owner_id: int  # store user id of the asker
    corrector_id: int  # store user id of who corrected
    question: str  # the question that was answered
    text: str  # the correction (approved text)
    by: str  # "admin" | "user"
    at: float  # unix time of the correction

    def __post_init__(self) -> None:
        if self.by not in NOTE_BY:
            raise ValueError(f"CorrectionNote.by is {self.by!r}; use one of {sorted(NOTE_BY)}")

    def citation(self) -> str:
        """``correction by an admin, 2026-12-01`` (local date of the correction)."""
        return f"correction by {NOTE_BY[self.by]}, {datetime.fromtimestamp(self.at):%Y-%m-%d}"

    def passage_text(self) -> str:
        return f"Q: {self.question.strip()}\nA: {self.text.strip()}"

    def passage(self, score: float) -> Passage:
        """The note as a search result; its chunk id is ``note:<answer_id>``."""
        return Passage(text=self.passage_text(), source=self.citation(), section="",
                       score=min(max(score, 0.0), 1.0), chunk_id=f"note:{self.answer_id}")


IngestStatus = Literal["added", "unchanged", "replaced", "skipped"]


@dataclass(frozen=True)
class IngestResult:
    source: str
    status: IngestStatus
    chunks: int = 0
    reason: str = ""  # why skipped: empty, too large, unsupported, unreadable, no text layer

    def line(self) -> str:
        detail = f" ({self.reason})" if self.reason else f" ({self.chunks} chunks)"
        return f"{self.status}: {self.source}{detail}"


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Normalized embeddings, one per text (blocking; call from a thread)."""
        ...


def embed_query(embedder: Embedder, text: str) -> list[float]:
    """The vector of a question: the embedder's query side when it has one (E5 prefixes)."""
    query_side = getattr(embedder, "embed_query", None)
    return list(query_side(text)) if query_side else embedder.embed([text])[0]


@runtime_checkable
class Retriever(Protocol):
    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        """Relevant passages, best first; empty when nothing passes the relevance threshold."""
        ...


@runtime_checkable
class CorrectionNotes(Protocol):
    """Corrections that take effect at once: ``search()`` also returns matching notes, ranked
    above document passages. With ``[rag] correction_notes = false`` nothing is stored or
    retrieved; removing and forgetting always work."""

    async def add_note(self, note: CorrectionNote) -> None:
        """Store ``note``, replacing any note of the same answer."""
        ...

    async def remove_note(self, answer_id: int) -> bool:
        """Remove the note of that answer; False when there was none."""
        ...

    async def forget_notes(self, user_id: int) -> int:
        """Remove every note the user asked or corrected; how many were removed."""
        ...


@runtime_checkable
class KnowledgeBase(Retriever, CorrectionNotes, Protocol):
    async def ingest(self, paths: Sequence[Path], *, by: str = "cli",
                     progress: Callable[[IngestResult], None] | None = None
                     ) -> list[IngestResult]:
        """Ingest files and folders (recursive); one result per file, never raises per file."""
        ...

    async def ingest_bytes(self, name: str, data: bytes, *, by: str) -> IngestResult:
        """Ingest one uploaded file (chat upload) from memory."""
        ...

    async def sources(self) -> list[KbSource]:
        """One record per ingested source (SQLite ``kb_sources``)."""
        ...

    async def remove(self, source: str) -> bool:
        ...

    async def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        ...

    async def count(self) -> int:
        """Number of chunks stored."""
        ...

    async def aclose(self) -> None:
        ...


def format_context(passages: Sequence[Passage]) -> str:
    """Numbered sources for the system prompt: ``[1] guide.md › Retraining\\n<text>``."""
    return "\n\n".join(f"[{i}] {p.label()}\n{p.text.strip()}" for i, p in enumerate(passages, 1))


def citations(passages: Sequence[Passage]) -> str:
    """Short citation footer for an answer, one line per distinct source label."""
    seen: list[str] = []
    for p in passages:
        if p.label() not in seen:
            seen.append(p.label())
    return "\n".join(f"[{i}] {label}" for i, label in enumerate(seen, 1))
