"""Typed rows the store returns: frozen dataclasses, never dicts of strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class User:
    id: int
    platform: str
    platform_user_id: str
    display_name: str
    opted_out: bool


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: str
    text: str
    created_at: float
    status: str = "done"
    reply_to: int | None = None
    platform_message_id: str | None = None
    model: str | None = None
    adapter: str | None = None
    latency_s: float | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    dropped_history: int = 0


@dataclass(frozen=True)
class TrainingRun:
    id: int
    started_at: float
    finished_at: float | None
    trigger: str
    status: str  # running | promoted | rejected | skipped | failed | waiting (for an admin)
    version: str | None
    parent: str | None
    summary: str
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    at: float
    platform: str
    actor: str
    action: str
    args: str
    allowed: bool
    result: str


@dataclass(frozen=True)
class StoreStats:
    users: int
    conversations: int
    messages: int
    feedback: int
    corrections: int


@dataclass(frozen=True)
class ForgetCounts:
    """What ``Store.forget_user`` deleted."""

    messages: int
    conversations: int
    feedback: int
    corrections: int
    users: int


@dataclass(frozen=True)
class KbSource:
    """One ingested knowledge-base source (a file path, or ``upload:...`` for uploads)."""

    source: str
    content_hash: str
    size: int
    chunks: int
    ingested_at: float
    ingested_by: str


@dataclass(frozen=True)
class TrainingMessage:
    """A finished message as the dataset builder sees it: its rating and its latest correction."""

    id: int
    role: str  # user | assistant
    text: str
    created_at: float
    sources: list[dict[str, Any]] = field(default_factory=list)
    feedback: int | None = None  # 1 (👍), -1 (👎) or None (unrated)
    correction: str | None = None  # the live correction's text (latest not rejected)
    correction_id: int | None = None
    correction_origin: str | None = None  # owner | admin | suggestion (see corrections.origin)
    # An admin's decision on this answer (its rating) and on its latest correction, if any:
    # "approved" | "rejected" | None (not reviewed); an approval may carry an edited text.
    feedback_review: str | None = None
    correction_review: str | None = None
    correction_edited: str | None = None


@dataclass(frozen=True)
class TrainingConversation:
    """A conversation of a user who did not opt out, its finished messages oldest first."""

    id: int
    user_id: int
    messages: tuple[TrainingMessage, ...]


@dataclass(frozen=True)
class AnswerOwner:
    """An answer and who asked it: the store user of the answer's conversation."""

    answer_id: int
    user_id: int  # store id of the asker
    platform: str
    platform_user_id: str
    display_name: str
    chat_id: str
    question: str  # the user turn this answers ("" if it is gone)
    answer: str


@dataclass(frozen=True)
class ReviewItem:
    """Something an admin can approve or reject: a correction, or an answer's rating.

    ``key`` is the short id ``/review`` shows and takes: ``c<correction id>`` or
    ``a<answer id>`` (the answer's rating).
    """

    answer_id: int
    correction_id: int | None
    question: str
    answer: str
    owner: str  # display name of the asker
    owner_id: int  # store id of the asker
    author: str  # display name of who corrected or rated
    author_id: int
    text: str = ""  # the correction ("" for a rating)
    origin: str = ""  # the correction's origin: owner | admin | suggestion ("" for a rating)
    value: int | None = None  # the rating (1 or -1; None for a correction)
    created_at: float = 0.0
    decision: str | None = None  # approved | rejected | None (not decided yet)
    reviewer: str = ""
    edited: str | None = None  # the text an approval replaced the correction with
    latest: bool = True  # False when a later correction of the same answer replaced it

    @property
    def key(self) -> str:
        return f"c{self.correction_id}" if self.correction_id is not None else f"a{self.answer_id}"


@dataclass(frozen=True)
class PendingMessage:
    """A user message stored but never answered, with where to answer it."""

    message: Message
    platform: str
    chat_id: str
    user_id: str  # the platform's user id


@dataclass(frozen=True)
class KbSignature:
    """Changes whenever the knowledge base does (compared whole)."""

    sources: int
    latest_ingest: float
    chunks: int
