"""Users: who talks to the bot, whether they opted out of training, and ``/forget``.

Deleting a user cascades (foreign keys) to their conversations, messages, feedback and
corrections, in one transaction.
"""

from __future__ import annotations

import time
from typing import Any

from data.connection import Connection
from data.rows import ForgetCounts, User

_USER_SQL = ("SELECT id, platform, platform_user_id, display_name, opted_out FROM users "
             "WHERE platform = ? AND platform_user_id = ?")


def _user(row: Any) -> User:
    return User(id=row[0], platform=row[1], platform_user_id=row[2], display_name=row[3],
                opted_out=bool(row[4]))


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

    async def user_texts(self, user_id: int) -> list[str]:
        """Every message and correction text of a user's conversations (for /forget purges)."""
        rows = await self.db.execute_fetchall(
            "SELECT m.text FROM messages m JOIN conversations c ON m.conversation_id = c.id "
            "WHERE c.user_id = ? UNION SELECT text FROM corrections WHERE user_id = ?",
            (user_id, user_id))
        return [str(r[0]) for r in rows]

    async def forget_user(self, user_id: int) -> ForgetCounts:
        """Delete the user and everything that cascades from them; return counts deleted."""
        async with self.transaction() as db:
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
        return ForgetCounts(**counts)
