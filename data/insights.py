"""Read-only views across the tables for the console: conversation search, one conversation with
its ratings and corrections, activity counts, the platforms seen, and the rated answers of users
who opted out (which training never sees).

Invariants: SELECT only (every write goes through the table modules' methods); every value from a
request is a bound parameter, and LIKE patterns escape ``%``, ``_`` and ``\\``, so a search string
is only ever text. Results are typed rows. :class:`Insights` wraps the one connection
(``Insights(store)``); it is not part of :class:`data.store.Store` because nothing but the
console reads these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from data.connection import Connection
from data.conversations import _MSG_COLS, _msg
from data.rows import Message

DAY_S = 86400.0


@dataclass(frozen=True)
class ConversationFilter:
    text: str = ""
    platform: str = ""
    user: str = ""
    rating: str = ""  # "" | "up" | "down" | "corrected" | "unrated"
    adapter: str = ""  # "" | "base" | a version
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class ConversationRow:
    id: int
    platform: str
    user: str
    user_key: str
    chat_id: str
    started_at: float
    last_at: float
    messages: int
    first_text: str
    ups: int
    downs: int
    corrections: int
    adapters: str


@dataclass(frozen=True)
class CorrectionView:
    id: int
    text: str
    origin: str
    author: str
    created_at: float
    decision: str | None
    reviewer: str
    edited: str | None


@dataclass(frozen=True)
class MessageView:
    message: Message
    feedback: int | None
    corrections: tuple[CorrectionView, ...]


@dataclass(frozen=True)
class Activity:
    conversations_today: int
    conversations_week: int
    feedback_today: int
    feedback_week: int
    ups_week: int
    downs_week: int
    corrections_week: int


@dataclass(frozen=True)
class OptedOutAnswer:
    """A rated or corrected answer of a user who opted out of training."""

    answer_id: int
    conversation_id: int
    user: str
    question: str
    answer: str


def like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with the wildcards escaped (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_ROW_SQL = """
SELECT c.id, c.platform, u.display_name, u.platform_user_id, c.chat_id, c.started_at,
  COALESCE(MAX(m.created_at), c.started_at), COUNT(m.id),
  COALESCE((SELECT text FROM messages WHERE conversation_id = c.id AND role = 'user'
            ORDER BY id LIMIT 1), ''),
  (SELECT COUNT(*) FROM feedback f JOIN messages x ON f.message_id = x.id
   WHERE x.conversation_id = c.id AND f.value = 1),
  (SELECT COUNT(*) FROM feedback f JOIN messages x ON f.message_id = x.id
   WHERE x.conversation_id = c.id AND f.value = -1),
  (SELECT COUNT(*) FROM corrections k JOIN messages x ON k.message_id = x.id
   WHERE x.conversation_id = c.id),
  COALESCE(GROUP_CONCAT(DISTINCT CASE WHEN m.role = 'assistant'
                                 THEN COALESCE(m.adapter, 'base') END), '')
FROM conversations c JOIN users u ON u.id = c.user_id
LEFT JOIN messages m ON m.conversation_id = c.id
"""


def _row(r: Any) -> ConversationRow:
    return ConversationRow(id=r[0], platform=r[1], user=r[2] or r[3], user_key=r[3],
                           chat_id=r[4], started_at=r[5], last_at=r[6], messages=r[7],
                           first_text=r[8], ups=r[9], downs=r[10], corrections=r[11],
                           adapters=",".join(sorted(set(filter(None, (r[12] or "").split(","))))))


def _where(f: ConversationFilter) -> tuple[str, list[Any]]:
    parts: list[str] = []
    args: list[Any] = []
    exists = "EXISTS (SELECT 1 FROM messages x {join} WHERE x.conversation_id = c.id AND {cond})"
    if f.text.strip():
        parts.append(exists.format(join="", cond="x.text LIKE ? ESCAPE '\\'"))
        args.append(like(f.text.strip()))
    if f.platform:
        parts.append("c.platform = ?")
        args.append(f.platform)
    if f.user.strip():
        parts.append("(u.display_name LIKE ? ESCAPE '\\' OR u.platform_user_id LIKE ? ESCAPE '\\')")
        args += [like(f.user.strip())] * 2
    if f.rating in ("up", "down"):
        parts.append(exists.format(join="JOIN feedback fb ON fb.message_id = x.id",
                                   cond="fb.value = ?"))
        args.append(1 if f.rating == "up" else -1)
    elif f.rating == "corrected":
        parts.append(exists.format(join="JOIN corrections k ON k.message_id = x.id", cond="1"))
    elif f.rating == "unrated":
        parts.append("NOT " + exists.format(join="JOIN feedback fb ON fb.message_id = x.id",
                                            cond="1"))
    if f.adapter == "base":
        parts.append(exists.format(join="", cond="x.role = 'assistant' AND x.adapter IS NULL"))
    elif f.adapter:
        parts.append(exists.format(join="", cond="x.adapter = ?"))
        args.append(f.adapter)
    if f.since is not None:
        parts.append("c.started_at >= ?")
        args.append(f.since)
    if f.until is not None:
        parts.append("c.started_at < ?")
        args.append(f.until)
    return (" WHERE " + " AND ".join(parts)) if parts else "", args


class Insights:
    """The console's read-only queries over one open connection (the Store)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def db(self) -> Any:
        return self._conn.db

    async def search_conversations(self, f: ConversationFilter, *, limit: int = 50,
                                   offset: int = 0) -> list[ConversationRow]:
        """Conversations matching ``f``, the most recently active first."""
        where, args = _where(f)
        rows = await self.db.execute_fetchall(
            _ROW_SQL + where + " GROUP BY c.id ORDER BY 7 DESC, c.id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset))
        return [_row(r) for r in rows]

    async def conversation(self, conversation_id: int
                           ) -> tuple[ConversationRow, list[MessageView]] | None:
        """One conversation with every message, its rating and its corrections (oldest first)."""
        rows = list(await self.db.execute_fetchall(_ROW_SQL + " WHERE c.id = ? GROUP BY c.id",
                                                    (conversation_id,)))
        if not rows:
            return None
        msgs = [_msg(r) for r in await self.db.execute_fetchall(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,))]
        ids = [m.id for m in msgs] or [0]
        marks = ",".join("?" * len(ids))
        ratings = {r[0]: r[1] for r in await self.db.execute_fetchall(
            f"SELECT message_id, value FROM feedback WHERE message_id IN ({marks})", ids)}
        found: dict[int, list[CorrectionView]] = {}
        for r in await self.db.execute_fetchall(
                "SELECT k.id, k.message_id, k.text, k.origin, COALESCE(NULLIF(u.display_name, ''), "
                "u.platform_user_id), k.created_at, rv.decision, COALESCE(rv.reviewer, ''), "
                "rv.edited_text FROM corrections k JOIN users u ON u.id = k.user_id "
                "LEFT JOIN reviews rv ON rv.correction_id = k.id "
                f"WHERE k.message_id IN ({marks}) ORDER BY k.id", ids):
            found.setdefault(r[1], []).append(CorrectionView(
                id=r[0], text=r[2], origin=r[3], author=r[4], created_at=r[5], decision=r[6],
                reviewer=r[7], edited=r[8]))
        views = [MessageView(m, ratings.get(m.id), tuple(found.get(m.id, ()))) for m in msgs]
        return _row(rows[0]), views

    async def _count(self, sql: str, *args: Any) -> int:
        rows = list(await self.db.execute_fetchall(sql, args))
        return int(rows[0][0] or 0) if rows else 0

    async def activity(self, now: float | None = None) -> Activity:
        """Conversations started and ratings given in the last day and week."""
        now = time.time() if now is None else now
        day, week = now - DAY_S, now - 7 * DAY_S
        conv = "SELECT COUNT(*) FROM conversations WHERE started_at >= ?"
        fb = "SELECT COUNT(*) FROM feedback WHERE updated_at >= ?"
        return Activity(
            conversations_today=await self._count(conv, day),
            conversations_week=await self._count(conv, week),
            feedback_today=await self._count(fb, day),
            feedback_week=await self._count(fb, week),
            ups_week=await self._count(fb + " AND value = 1", week),
            downs_week=await self._count(fb + " AND value = -1", week),
            corrections_week=await self._count(
                "SELECT COUNT(*) FROM corrections WHERE created_at >= ?", week))

    async def platforms(self) -> list[str]:
        return [r[0] for r in await self.db.execute_fetchall(
            "SELECT DISTINCT platform FROM conversations ORDER BY platform")]

    async def opted_out_answers(self, limit: int = 200) -> list[OptedOutAnswer]:
        """Rated or corrected answers of users who opted out (newest first): what training
        would have read had they not opted out."""
        rows = await self.db.execute_fetchall(
            "SELECT m.id, m.conversation_id, COALESCE(NULLIF(u.display_name, ''), "
            "u.platform_user_id), COALESCE(q.text, ''), m.text FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id "
            "LEFT JOIN messages q ON q.id = m.reply_to "
            "WHERE u.opted_out = 1 AND m.role = 'assistant' AND m.status = 'done' AND ("
            "EXISTS (SELECT 1 FROM feedback f WHERE f.message_id = m.id) OR "
            "EXISTS (SELECT 1 FROM corrections k WHERE k.message_id = m.id)) "
            "ORDER BY m.id DESC LIMIT ?", (limit,))
        return [OptedOutAnswer(*r) for r in rows]
