"""Who asked an answer, and the admins' review of corrections and ratings (table ``reviews``).

One decision per item, final: a correction (``correction_id`` set) or an answer's rating
(``correction_id`` NULL), approved (optionally with an edited text) or rejected. Deleting the
answer or the correction deletes its review (foreign keys). Which items wait for a decision is
the training rule's business (``training.review``); this module lists the two sets it needs:
suggestions only, or every undecided correction and rating (``everything=True``). Users who
opted out are not listed: nothing of theirs trains. An answer's *live* correction is its latest
one that was not rejected, so a rejected suggestion cannot hide the asker's earlier correction;
the training view (``data.feedback``) uses the same one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from data.connection import Connection
from data.rows import AnswerOwner, ReviewItem

ReviewOutcome = Literal["recorded", "already_decided", "missing"]


def live_correction_sql(message: str) -> str:
    """SQL for the id of the answer ``message``'s live correction: its latest one that an admin
    did not reject (a rejected correction gives way to the one before it)."""
    return (f"(SELECT MAX(k0.id) FROM corrections k0 WHERE k0.message_id = {message} AND NOT "
            "EXISTS (SELECT 1 FROM reviews r0 WHERE r0.correction_id = k0.id AND "
            "r0.decision = 'rejected'))")


_CORRECTIONS = (
    "SELECT k.id, k.message_id, COALESCE(q.text, ''), m.text, ou.display_name, ou.id, "
    "au.display_name, au.id, k.text, k.origin, k.created_at, r.decision, r.reviewer, "
    f"k.id = {live_correction_sql('k.message_id')}, r.edited_text "
    "FROM corrections k JOIN messages m ON m.id = k.message_id "
    "JOIN conversations c ON c.id = m.conversation_id JOIN users ou ON ou.id = c.user_id "
    "JOIN users au ON au.id = k.user_id LEFT JOIN messages q ON q.id = m.reply_to "
    "LEFT JOIN reviews r ON r.correction_id = k.id ")
_RATINGS = (
    "SELECT f.message_id, COALESCE(q.text, ''), m.text, ou.display_name, ou.id, "
    "fu.display_name, fu.id, f.value, f.updated_at, r.decision, r.reviewer "
    "FROM feedback f JOIN messages m ON m.id = f.message_id "
    "JOIN conversations c ON c.id = m.conversation_id JOIN users ou ON ou.id = c.user_id "
    "JOIN users fu ON fu.id = f.user_id LEFT JOIN messages q ON q.id = m.reply_to "
    "LEFT JOIN reviews r ON r.answer_id = f.message_id AND r.correction_id IS NULL ")
# a rating matters only while its answer has no correction that is (or may still be) trained
_NO_LIVE_CORRECTION = f"{live_correction_sql('f.message_id')} IS NULL"


def _correction(r: Any) -> ReviewItem:
    return ReviewItem(answer_id=r[1], correction_id=r[0], question=r[2], answer=r[3], owner=r[4],
                      owner_id=r[5], author=r[6], author_id=r[7], text=r[8], origin=r[9],
                      created_at=r[10], decision=r[11], reviewer=r[12] or "", latest=bool(r[13]),
                      edited=r[14])


def _rating(r: Any) -> ReviewItem:
    return ReviewItem(answer_id=r[0], correction_id=None, question=r[1], answer=r[2], owner=r[3],
                      owner_id=r[4], author=r[5], author_id=r[6], value=r[7], created_at=r[8],
                      decision=r[9], reviewer=r[10] or "")


class ReviewTables(Connection):
    async def answer_owner(self, answer_id: int) -> AnswerOwner | None:
        """The answer ``answer_id`` and its asker; None if it is not a stored answer."""
        rows = list(await self.db.execute_fetchall(
            "SELECT m.id, u.id, u.platform, u.platform_user_id, u.display_name, c.chat_id, "
            "COALESCE(q.text, ''), m.text FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id "
            "LEFT JOIN messages q ON q.id = m.reply_to "
            "WHERE m.id = ? AND m.role = 'assistant'", (answer_id,)))
        if not rows:
            return None
        r = rows[0]
        return AnswerOwner(answer_id=r[0], user_id=r[1], platform=r[2], platform_user_id=r[3],
                           display_name=r[4], chat_id=r[5], question=r[6], answer=r[7])

    async def correction_item(self, correction_id: int) -> ReviewItem | None:
        rows = list(await self.db.execute_fetchall(_CORRECTIONS + "WHERE k.id = ?",
                                                   (correction_id,)))
        return _correction(rows[0]) if rows else None

    async def rating_item(self, answer_id: int) -> ReviewItem | None:
        rows = list(await self.db.execute_fetchall(_RATINGS + "WHERE f.message_id = ?",
                                                   (answer_id,)))
        return _rating(rows[0]) if rows else None

    async def live_correction(self, answer_id: int) -> ReviewItem | None:
        """The correction of that answer that counts (see :func:`live_correction_sql`)."""
        rows = list(await self.db.execute_fetchall(
            _CORRECTIONS + f"WHERE k.id = {live_correction_sql('?')}", (answer_id,)))
        return _correction(rows[0]) if rows else None

    async def pending_reviews(self, *, everything: bool, limit: int = 1000) -> list[ReviewItem]:
        """Undecided items, oldest first: the latest correction of each answer when it is a
        suggestion (``everything``: any latest correction, and ratings that still matter)."""
        origin = "" if everything else "AND k.origin = 'suggestion' "
        rows = await self.db.execute_fetchall(
            _CORRECTIONS + "WHERE r.id IS NULL AND ou.opted_out = 0 AND m.status = 'done' "
            f"AND k.id = {live_correction_sql('k.message_id')} " + origin
            + "ORDER BY k.created_at, k.id LIMIT ?", (limit,))
        items = [_correction(r) for r in rows]
        if everything:
            rows = await self.db.execute_fetchall(
                _RATINGS + "WHERE r.id IS NULL AND ou.opted_out = 0 AND m.status = 'done' AND "
                + _NO_LIVE_CORRECTION + " ORDER BY f.updated_at, f.message_id LIMIT ?", (limit,))
            items += [_rating(r) for r in rows]
            items.sort(key=lambda i: i.created_at)
        return items[:limit]

    async def add_review(self, answer_id: int, correction_id: int | None, decision: str,
                         reviewer: str, edited_text: str | None = None) -> ReviewOutcome:
        """Record a decision ("approved" | "rejected"); an item is decided once.

        "missing": the answer (or the correction, or for a rating the rating) no longer exists.
        """
        if decision not in ("approved", "rejected"):
            raise ValueError("decision must be 'approved' or 'rejected'")
        async with self.transaction() as db:
            if correction_id is None:
                found = await db.execute_fetchall(
                    "SELECT 1 FROM feedback WHERE message_id = ?", (answer_id,))
            else:
                found = await db.execute_fetchall(
                    "SELECT 1 FROM corrections WHERE id = ? AND message_id = ?",
                    (correction_id, answer_id))
            if not list(found):
                return "missing"
            decided = await db.execute_fetchall(
                "SELECT 1 FROM reviews WHERE answer_id = ? AND IFNULL(correction_id, 0) = ?",
                (answer_id, correction_id or 0))
            if list(decided):
                return "already_decided"
            await db.execute(
                "INSERT INTO reviews (answer_id, correction_id, decision, edited_text, reviewer, "
                "at) VALUES (?, ?, ?, ?, ?, ?)",
                (answer_id, correction_id, decision, edited_text, reviewer, time.time()))
            return "recorded"
