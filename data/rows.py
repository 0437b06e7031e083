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
    status: str  # running | promoted | rejected | skipped | failed
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
    correction: str | None = None  # the latest correction's text
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
