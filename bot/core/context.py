"""What a command handler may use: the :class:`CommandContext` (the core) and :class:`Learning`.

Protocols only, so the handler modules (``handlers``, ``trust``, ``review``) share them without
importing each other; ``bot.core.Core`` implements :class:`CommandContext`, the learning loop
(``training.service.LearningService``) implements :class:`Learning`.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from bot.core.config import CoreSettings
from data.store import Store
from data.users import Forgotten
from llm.base import ChatModel
from rag.base import KnowledgeBase, Retriever


class Outcome(Protocol):
    """A retrain's report (``training.service.RetrainOutcome``)."""

    text: str
    ok: bool
    files: list[Path]


class Learning(Protocol):
    """What the commands need from training/ (``training.service.LearningService``)."""

    @property
    def running(self) -> bool: ...

    async def retrain(self, trigger: str = "manual") -> Outcome: ...

    async def rollback(self, version: str | None) -> str: ...

    def adapters_text(self) -> str: ...

    def probe(self, args: str) -> str: ...

    async def purge_forgotten(self, who: Forgotten) -> int:
        """/forget: drop a user's records from dataset files on disk (by id; by text in files
        without ids); returns records removed; raises if a file could not be purged."""
        ...

    def waiting_candidate(self) -> str | None:
        """The candidate waiting for an admin (``[training] promote = "admin"``), else None."""
        ...

    async def approve_candidate(self, by: str) -> str:
        """Promote the waiting candidate; the reply text (clear when nothing is waiting)."""
        ...

    async def reject_candidate(self, by: str) -> str:
        """Discard the waiting candidate; the reply text (clear when nothing is waiting)."""
        ...


class CommandContext(Protocol):
    """What a handler may use: the core's services (``bot.core.Core`` is one)."""

    @property
    def cfg(self) -> CoreSettings: ...

    @property
    def store(self) -> Store: ...

    @property
    def model(self) -> ChatModel: ...

    @property
    def knowledge(self) -> KnowledgeBase | Retriever | None: ...

    @property
    def learning(self) -> Learning | None: ...

    async def notify_admins(self, text: str, files: list[Path] | None = None) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (awaited at shutdown)."""
        ...
