"""Conversations and their messages: what was asked, what was answered, and where it shows.

A user message is stored ``pending`` before it is answered; :meth:`ConversationTables.answer`
stores the answer and marks its question ``done`` in one transaction, so after a crash the
pending messages are exactly the unanswered ones. History is finished (``done``) messages only.
Retention deletes in bounded batches (:meth:`ConversationTables.expire_batch`), so it never holds
the one write connection for long.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from data.connection import Connection
from data.rows import Message, PendingMessage


@dataclass(frozen=True)
class Expired:
    """What one retention batch deleted."""

    conversations: tuple[int, ...]
    messages: tuple[int, ...]
    questions: tuple[str, ...] = ()  # for run reports, which sample questions without ids

_MSG_COLS = ("id, conversation_id, role, text, created_at, status, reply_to, platform_message_id, "
             "model, adapter, latency_s, sources, dropped_history")
_M_COLS = ", ".join("m." + c.strip() for c in _MSG_COLS.split(","))  # the same, joined as m


def _msg(row: Any) -> Message:
    return Message(id=row[0], conversation_id=row[1], role=row[2], text=row[3], created_at=row[4],
                   status=row[5], reply_to=row[6], platform_message_id=row[7], model=row[8],
                   adapter=row[9], latency_s=row[10], sources=json.loads(row[11] or "[]"),
                   dropped_history=row[12])


class ConversationTables(Connection):
    # ---- conversations ---------------------------------------------------------------------
    async def active_conversation(self, user_id: int, platform: str, chat_id: str) -> int:
        """The open conversation of this user in this chat, created if there is none."""
        async with self.transaction() as db:
            rows = list(await db.execute_fetchall(
                "SELECT id FROM conversations WHERE user_id = ? AND platform = ? AND chat_id = ? "
                "AND ended_at IS NULL ORDER BY id DESC LIMIT 1",
                (user_id, platform, str(chat_id))))
            if rows:
                return int(rows[0][0])
            cur = await db.execute(
                "INSERT INTO conversations (user_id, platform, chat_id, started_at) "
                "VALUES (?, ?, ?, ?)",
                (user_id, platform, str(chat_id), time.time()))
            return int(cur.lastrowid or 0)

    async def end_conversation(self, user_id: int, platform: str, chat_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE conversations SET ended_at = ? WHERE user_id = ? AND platform = ? "
                "AND chat_id = ? AND ended_at IS NULL",
                (time.time(), user_id, platform, str(chat_id)))

    async def delete_older_than(self, cutoff: float, batch: int = 0) -> int:
        """Retention: delete conversations whose last message is older than ``cutoff``; with
        ``batch`` > 0 at most that many (one short transaction: call again until 0)."""
        return len((await self.expire_batch(cutoff, batch or 2**62)).conversations)

    async def expire_batch(self, cutoff: float, batch: int) -> Expired:
        """Retention, one bounded transaction: delete up to ``batch`` conversations whose last
        message is older than ``cutoff``; returns their ids, their messages' ids (the files on
        disk are purged by them) and their questions."""
        async with self.transaction() as db:
            convs = [int(r[0]) for r in await db.execute_fetchall(
                "SELECT c.id FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
                "GROUP BY c.id HAVING COALESCE(MAX(m.created_at), c.started_at) < ? "
                "ORDER BY c.id LIMIT ?", (cutoff, batch))]
            if not convs:
                return Expired((), ())
            marks = ",".join("?" * len(convs))
            msgs = list(await db.execute_fetchall(
                f"SELECT id, role, text FROM messages WHERE conversation_id IN ({marks})", convs))
            await db.execute(f"DELETE FROM conversations WHERE id IN ({marks})", convs)
        return Expired(tuple(convs), tuple(int(r[0]) for r in msgs),
                       tuple(str(r[2]) for r in msgs if r[1] == "user"))

    # ---- writing messages ------------------------------------------------------------------
    async def add_message(self, conversation_id: int, role: str, text: str, *,
                          status: str = "done", reply_to: int | None = None,
                          platform_message_id: str | None = None, model: str | None = None,
                          adapter: str | None = None, latency_s: float | None = None,
                          sources: Iterable[dict[str, Any]] = (),
                          dropped_history: int = 0) -> int:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO messages (conversation_id, role, text, created_at, status, reply_to, "
                "platform_message_id, model, adapter, latency_s, sources, dropped_history) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, text, time.time(), status, reply_to, platform_message_id,
                 model, adapter, latency_s, json.dumps(list(sources), ensure_ascii=False),
                 dropped_history))
            return int(cur.lastrowid or 0)

    async def set_message_status(self, message_id: int, status: str) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE messages SET status = ? WHERE id = ?", (status, message_id))

    async def answer(self, user_message_id: int, conversation_id: int, text: str, *,
                     model: str, adapter: str | None, latency_s: float,
                     sources: Iterable[dict[str, Any]] = (), dropped_history: int = 0) -> int:
        """Store an answer and mark its question done, in one transaction."""
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO messages (conversation_id, role, text, created_at, status, reply_to, "
                "model, adapter, latency_s, sources, dropped_history) "
                "VALUES (?, 'assistant', ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
                (conversation_id, text, time.time(), user_message_id, model, adapter, latency_s,
                 json.dumps(list(sources), ensure_ascii=False), dropped_history))
            await db.execute("UPDATE messages SET status = 'done' WHERE id = ?", (user_message_id,))
            return int(cur.lastrowid or 0)

    async def add_message_refs(self, message_id: int, platform: str, chat_id: str,
                               platform_message_ids: Iterable[str]) -> None:
        """Remember which platform messages show a stored message (a long answer has several)."""
        async with self.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO message_refs (platform, chat_id, platform_message_id, "
                "message_id) VALUES (?, ?, ?, ?)",
                [(platform, str(chat_id), str(pid), message_id) for pid in platform_message_ids])

    # ---- reading messages ------------------------------------------------------------------
    async def get_message(self, message_id: int) -> Message | None:
        rows = list(await self.db.execute_fetchall(
            f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,)))
        return _msg(rows[0]) if rows else None

    async def find_by_platform_id(self, platform: str, chat_id: str,
                                  platform_message_id: str) -> Message | None:
        refs = list(await self.db.execute_fetchall(
            "SELECT message_id FROM message_refs WHERE platform = ? AND chat_id = ? AND "
            "platform_message_id = ?", (platform, str(chat_id), str(platform_message_id))))
        if refs:
            return await self.get_message(int(refs[0][0]))
        rows = list(await self.db.execute_fetchall(
            f"SELECT {_M_COLS} FROM messages m "
            "JOIN conversations c ON m.conversation_id = c.id WHERE c.platform = ? AND "
            "c.chat_id = ? AND m.platform_message_id = ? ORDER BY m.id DESC LIMIT 1",
            (platform, str(chat_id), str(platform_message_id))))
        return _msg(rows[0]) if rows else None

    async def history(self, conversation_id: int, limit: int,
                      before_id: int | None = None) -> list[Message]:
        """The last ``limit`` finished messages of a conversation, oldest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND status = 'done' "
            "AND id < ? ORDER BY id DESC LIMIT ?",
            (conversation_id, before_id if before_id is not None else 2**62, limit))
        return [_msg(r) for r in reversed(list(rows))]

    async def last_answer(self, conversation_id: int) -> Message | None:
        rows = list(await self.db.execute_fetchall(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND role = 'assistant' "
            "ORDER BY id DESC LIMIT 1", (conversation_id,)))
        return _msg(rows[0]) if rows else None

    async def pending_messages(self) -> list[PendingMessage]:
        """User messages stored but never answered, oldest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_M_COLS}, c.platform, "
            "c.chat_id, u.platform_user_id FROM messages m JOIN conversations c ON "
            "m.conversation_id = c.id JOIN users u ON c.user_id = u.id "
            "WHERE m.status = 'pending' ORDER BY m.id")
        return [PendingMessage(_msg(r[:13]), r[13], r[14], r[15]) for r in rows]
