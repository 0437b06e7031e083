"""Ratings (👍/👎, one per answer, the latest wins) and corrections, and the view training reads.

:meth:`FeedbackTables.training_conversations` is the only way training sees conversations: users
who opted out are excluded here (their conversations, and their corrections of other users'
answers), and forgotten users are already deleted.
"""

from __future__ import annotations

import json
import time

from data.connection import Connection
from data.reviews import live_correction_sql
from data.rows import TrainingConversation, TrainingMessage

# the live correction (data.reviews) among those whose author did not opt out: an opted-out
# user's correction of someone else's answer is not trained either
_TRAINABLE_CORRECTION = live_correction_sql("m.id").replace(
    "WHERE k0.message_id = m.id AND",
    "WHERE k0.message_id = m.id AND NOT EXISTS (SELECT 1 FROM users ku WHERE ku.id = k0.user_id "
    "AND ku.opted_out = 1) AND")
if _TRAINABLE_CORRECTION == live_correction_sql("m.id"):  # pragma: no cover
    raise ImportError("data.reviews.live_correction_sql changed shape: update data.feedback")


class FeedbackTables(Connection):
    async def set_feedback(self, message_id: int, user_id: int, value: int) -> None:
        """One rating per answer: the latest wins, with its rater (``user_id``). A changed
        value drops an admin's decision on the old one (it was about a different rating)."""
        if value not in (-1, 1):
            raise ValueError("feedback value must be 1 or -1")
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                "DELETE FROM reviews WHERE answer_id = ? AND correction_id IS NULL AND EXISTS "
                "(SELECT 1 FROM feedback WHERE message_id = ? AND value != ?)",
                (message_id, message_id, value))
            await db.execute(
                "INSERT INTO feedback (message_id, user_id, value, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
                "value = excluded.value, user_id = excluded.user_id, "
                "updated_at = excluded.updated_at",
                (message_id, user_id, value, now, now))

    async def get_feedback(self, message_id: int) -> int | None:
        rows = list(await self.db.execute_fetchall(
            "SELECT value FROM feedback WHERE message_id = ?", (message_id,)))
        return int(rows[0][0]) if rows else None

    async def add_correction(self, message_id: int, user_id: int, text: str,
                             origin: str = "owner") -> int:
        """``origin``: "owner" (the asker), "admin", or "suggestion" (someone else's answer;
        trains only once approved)."""
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO corrections (message_id, user_id, text, created_at, origin) "
                "VALUES (?, ?, ?, ?, ?)",
                (message_id, user_id, text, time.time(), origin))
            return int(cur.lastrowid or 0)

    async def training_conversations(self) -> list[TrainingConversation]:
        """Every conversation of users who did not opt out: its finished messages, oldest first,
        each with its rating and live correction (the latest one not rejected) and the
        admins' decisions on them (for the dataset builder)."""
        rows = await self.db.execute_fetchall(
            "SELECT c.id, c.user_id, m.id, m.role, m.text, m.created_at, m.sources, f.value, "
            "k.id, k.text, k.origin, "
            "(SELECT decision FROM reviews r WHERE r.answer_id = m.id "
            "AND r.correction_id IS NULL), "
            "rk.decision, rk.edited_text "
            "FROM conversations c JOIN users u ON c.user_id = u.id "
            "JOIN messages m ON m.conversation_id = c.id "
            "LEFT JOIN feedback f ON f.message_id = m.id "
            f"LEFT JOIN corrections k ON k.id = {_TRAINABLE_CORRECTION} "
            "LEFT JOIN reviews rk ON rk.correction_id = k.id "
            "WHERE u.opted_out = 0 AND m.status = 'done' ORDER BY c.id, m.id")
        owners: dict[int, int] = {}
        messages: dict[int, list[TrainingMessage]] = {}
        for r in rows:
            owners.setdefault(r[0], r[1])
            messages.setdefault(r[0], []).append(TrainingMessage(
                id=r[2], role=r[3], text=r[4], created_at=r[5], sources=json.loads(r[6] or "[]"),
                feedback=r[7], correction_id=r[8], correction=r[9], correction_origin=r[10],
                feedback_review=r[11], correction_review=r[12], correction_edited=r[13]))
        return [TrainingConversation(id=cid, user_id=owners[cid], messages=tuple(msgs))
                for cid, msgs in messages.items()]
