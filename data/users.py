"""Users: who talks to the bot, whether they opted out of training, and ``/forget``.

Deleting a user cascades (foreign keys) to their conversations, messages, feedback and
corrections, in one transaction that also drops the passages of their uploaded documents from
other answers' stored ``sources`` and blanks their audit rows (actor, arguments, result); then the
WAL is checkpointed (``secure_delete`` is on, so the deleted text leaves the file).
:meth:`UserTables.forgotten` lists, before that, the ids the files on disk are purged by.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from data.connection import Connection
from data.rows import ForgetCounts, User

_USER_SQL = ("SELECT id, platform, platform_user_id, display_name, opted_out FROM users "
             "WHERE platform = ? AND platform_user_id = ?")


def _user(row: Any) -> User:
    return User(id=row[0], platform=row[1], platform_user_id=row[2], display_name=row[3],
                opted_out=bool(row[4]))


FORGOTTEN_ACTOR = "(forgotten user)"


@dataclass(frozen=True)
class Forgotten:
    """What leaves the files on disk: records carrying ids (``meta``) go by id; files written
    before records had ids fall back to ``texts`` (the user's raw message and correction texts).
    Retention uses the same shape with the expired messages' ids and no texts."""

    user_ids: frozenset[int] = frozenset()
    message_ids: frozenset[int] = frozenset()
    correction_ids: frozenset[int] = frozenset()
    sources: frozenset[str] = frozenset()  # names of the documents the user uploaded
    texts: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.user_ids or self.message_ids or self.correction_ids or self.sources
                    or self.texts)


class UserTables(Connection):
    async def ensure_user(self, platform: str, platform_user_id: str,
                          display_name: str = "") -> User:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO users (platform, platform_user_id, display_name, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (platform, platform_user_id) DO UPDATE SET "
                "display_name = CASE WHEN excluded.display_name != '' THEN excluded.display_name "
                "ELSE users.display_name END",
                (platform, str(platform_user_id), display_name, time.time()))
            rows = list(await db.execute_fetchall(_USER_SQL, (platform, str(platform_user_id))))
        return _user(rows[0])

    async def get_user(self, platform: str, platform_user_id: str) -> User | None:
        rows = list(await self.db.execute_fetchall(_USER_SQL, (platform, str(platform_user_id))))
        return _user(rows[0]) if rows else None

    async def set_opted_out(self, user_id: int, opted_out: bool) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE users SET opted_out = ? WHERE id = ?",
                             (int(opted_out), user_id))

    async def set_blocked(self, user_id: int, blocked: bool = True) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE users SET blocked_bot = ? WHERE id = ?",
                             (int(blocked), user_id))

    async def user_chats(self, user_id: int) -> list[str]:
        """The chats a user has conversations in (``/forget`` holds each chat's lock)."""
        rows = await self.db.execute_fetchall(
            "SELECT DISTINCT chat_id FROM conversations WHERE user_id = ?", (user_id,))
        return [str(r[0]) for r in rows]

    async def user_texts(self, user_id: int) -> list[str]:
        """Every message and correction text of a user's conversations (for /forget purges)."""
        rows = await self.db.execute_fetchall(
            "SELECT m.text FROM messages m JOIN conversations c ON m.conversation_id = c.id "
            "WHERE c.user_id = ? UNION SELECT text FROM corrections WHERE user_id = ?",
            (user_id, user_id))
        return [str(r[0]) for r in rows]

    async def forgotten(self, user_id: int, sources: Iterable[str] = ()) -> Forgotten:
        """The ids (and, for old files, texts) of everything of ``user_id`` that files on disk
        may hold; ``sources``: the names of the documents they uploaded."""
        msgs = await self.db.execute_fetchall(
            "SELECT m.id FROM messages m JOIN conversations c ON m.conversation_id = c.id "
            "WHERE c.user_id = ?", (user_id,))
        fixes = await self.db.execute_fetchall(
            "SELECT id FROM corrections WHERE user_id = ?", (user_id,))
        return Forgotten(user_ids=frozenset({user_id}),
                         message_ids=frozenset(int(r[0]) for r in msgs),
                         correction_ids=frozenset(int(r[0]) for r in fixes),
                         sources=frozenset(sources), texts=tuple(await self.user_texts(user_id)))

    async def forget_user(self, user_id: int, sources: Iterable[str] = ()) -> ForgetCounts:
        """Delete the user and everything that cascades from them, the passages of their
        uploaded documents (``sources``: names, as answers store them) from every answer, and
        the identity and arguments of their audit rows; checkpoint the WAL. Returns the counts
        deleted."""
        names = set(sources)
        async with self.transaction() as db:
            who = list(await db.execute_fetchall(
                "SELECT platform, platform_user_id FROM users WHERE id = ?", (user_id,)))
            if who:
                await db.execute(
                    "UPDATE audit SET actor = ?, args = '', result = '' WHERE platform = ? "
                    "AND actor = ?", (FORGOTTEN_ACTOR, who[0][0], who[0][1]))
            if names:
                await _drop_sources(db, names)
            counts = {}
            for name, sql in (
                ("messages", "SELECT COUNT(*) FROM messages m JOIN conversations c "
                             "ON m.conversation_id = c.id WHERE c.user_id = ?"),
                ("conversations", "SELECT COUNT(*) FROM conversations WHERE user_id = ?"),
                ("feedback", "SELECT COUNT(*) FROM feedback WHERE user_id = ?"),
                ("corrections", "SELECT COUNT(*) FROM corrections WHERE user_id = ?"),
            ):
                rows = list(await db.execute_fetchall(sql, (user_id,)))
                counts[name] = int(rows[0][0])
            cur = await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
            counts["users"] = cur.rowcount
        await self.checkpoint()
        return ForgetCounts(**counts)


async def _drop_sources(db: Any, names: set[str]) -> None:
    """Remove the passages of the documents ``names`` from every stored answer."""
    marks = ",".join("?" * len(names))
    rows = await db.execute_fetchall(
        "SELECT DISTINCT m.id, m.sources FROM messages m, json_each(m.sources) j "
        f"WHERE m.sources != '[]' AND json_extract(j.value, '$.source') IN ({marks})",
        tuple(names))
    for mid, raw in rows:
        kept = [s for s in json.loads(raw or "[]")
                if not (isinstance(s, dict) and s.get("source") in names)]
        await db.execute("UPDATE messages SET sources = ? WHERE id = ?",
                         (json.dumps(kept, ensure_ascii=False), mid))
