"""Async SQLite store (aiosqlite, WAL, foreign keys): NightOwl's system of record.

:class:`Store` is the one object the core, the platforms, retrieval and training use. It is the
table modules put together, all on one :class:`data.connection.Connection`, so every write goes
through its one ``transaction()``:

- ``data.users``          users, opt-out, ``/forget``
- ``data.conversations``  conversations, messages, platform message refs, retention
- ``data.feedback``       ratings, corrections, and the conversations training reads
- ``data.reviews``        who asked an answer; admins' decisions on corrections and ratings
- ``data.runs``           training runs, the audit log, the key-value table
- ``data.kb``             the knowledge base's source ledger

Every read returns typed rows (``data.rows``), never dicts of strings.
"""

from __future__ import annotations

from data.conversations import ConversationTables
from data.feedback import FeedbackTables
from data.kb import KbTables
from data.reviews import ReviewTables
from data.rows import StoreStats
from data.runs import RunTables
from data.users import UserTables


class Store(UserTables, ConversationTables, FeedbackTables, ReviewTables, RunTables,
            KbTables):
    """Use as ``async with Store(path) as store:``; ``path`` may be ``":memory:"`` for tests."""

    async def stats(self) -> StoreStats:
        out = {}
        for name in ("users", "conversations", "messages", "feedback", "corrections"):
            rows = list(await self.db.execute_fetchall(f"SELECT COUNT(*) FROM {name}"))
            out[name] = int(rows[0][0])
        return StoreStats(**out)
