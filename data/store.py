"""Async SQLite store (aiosqlite, WAL, foreign keys). Every write is one transaction."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from data.errors import StoreError
from data.migrations import MIGRATIONS
from data.rows import (
    AuditEntry,
    ForgetCounts,
    KbSource,
    Message,
    StoreStats,
    TrainingRun,
    User,
)

_MSG_COLS = ("id, conversation_id, role, text, created_at, status, reply_to, platform_message_id, "
             "model, adapter, latency_s, sources, dropped_history")


def _msg(row: Any) -> Message:
    return Message(id=row[0], conversation_id=row[1], role=row[2], text=row[3], created_at=row[4],
                   status=row[5], reply_to=row[6], platform_message_id=row[7], model=row[8],
                   adapter=row[9], latency_s=row[10], sources=json.loads(row[11] or "[]"),
                   dropped_history=row[12])


def _user(row: Any) -> User:
    return User(id=row[0], platform=row[1], platform_user_id=row[2], display_name=row[3],
                opted_out=bool(row[4]))


class Store:
    """The data/ functions the core, the platforms and training use.

    Use as ``async with Store(path) as store:``; ``path`` may be ``":memory:"`` for tests.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        # one connection is shared by every task: transactions must not interleave
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StoreError(
                f"cannot open the database {self.path}: {exc}. If the file is corrupt, restore "
                "a backup (nightowl restore) or move it away.") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        db = self.db
        async with self._write_lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _migrate(self) -> None:
        db = self.db
        await db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {r[0] for r in await db.execute_fetchall("SELECT name FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            async with self.transaction():
                for stmt in [s for s in sql.split(";") if s.strip()]:
                    await db.execute(stmt)
                await db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))

    async def applied_migrations(self) -> list[str]:
        rows = await self.db.execute_fetchall("SELECT name FROM schema_migrations ORDER BY name")
        return [r[0] for r in rows]

    async def integrity_check(self) -> str:
        rows = list(await self.db.execute_fetchall("PRAGMA integrity_check"))
        return str(rows[0][0]) if rows else "no result"

    async def backup(self, dest: str | Path) -> None:
        """Copy the live database with SQLite's online backup API."""
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        target = await aiosqlite.connect(str(dest))
        try:
            await self.db.backup(target)
        finally:
            await target.close()

    # ---- users -------------------------------------------------------------------------
    async def ensure_user(self, platform: str, platform_user_id: str,
                          display_name: str = "") -> User:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO users (platform, platform_user_id, display_name, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (platform, platform_user_id) DO UPDATE SET "
                "display_name = CASE WHEN excluded.display_name != '' THEN excluded.display_name "
                "ELSE users.display_name END",
                (platform, str(platform_user_id), display_name, time.time()))
            rows = list(await db.execute_fetchall(
                "SELECT id, platform, platform_user_id, display_name, opted_out FROM users "
                "WHERE platform = ? AND platform_user_id = ?", (platform, str(platform_user_id))))
        return _user(rows[0])

    async def get_user(self, platform: str, platform_user_id: str) -> User | None:
        rows = list(await self.db.execute_fetchall(
            "SELECT id, platform, platform_user_id, display_name, opted_out FROM users "
            "WHERE platform = ? AND platform_user_id = ?", (platform, str(platform_user_id))))
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

    # ---- conversations and messages -----------------------------------------------------
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

    async def set_platform_message_id(self, message_id: int, platform_message_id: str) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE messages SET platform_message_id = ? WHERE id = ?",
                             (str(platform_message_id), message_id))

    async def add_message_refs(self, message_id: int, platform: str, chat_id: str,
                               platform_message_ids: Iterable[str]) -> None:
        """Remember which platform messages show a stored message (a long answer has several)."""
        async with self.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO message_refs (platform, chat_id, platform_message_id, "
                "message_id) VALUES (?, ?, ?, ?)",
                [(platform, str(chat_id), str(pid), message_id) for pid in platform_message_ids])

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
            f"SELECT {', '.join('m.' + c.strip() for c in _MSG_COLS.split(','))} FROM messages m "
            "JOIN conversations c ON m.conversation_id = c.id WHERE c.platform = ? AND "
            "c.chat_id = ? AND m.platform_message_id = ? ORDER BY m.id DESC LIMIT 1",
            (platform, str(chat_id), str(platform_message_id))))
        return _msg(rows[0]) if rows else None

    async def message_owner(self, message_id: int) -> int | None:
        rows = list(await self.db.execute_fetchall(
            "SELECT c.user_id FROM messages m JOIN conversations c ON m.conversation_id = c.id "
            "WHERE m.id = ?", (message_id,)))
        return int(rows[0][0]) if rows else None

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

    async def pending_messages(self) -> list[tuple[Message, str, str, str]]:
        """User messages stored but never answered: (message, platform, chat_id, user id)."""
        rows = await self.db.execute_fetchall(
            f"SELECT {', '.join('m.' + c.strip() for c in _MSG_COLS.split(','))}, c.platform, "
            "c.chat_id, u.platform_user_id FROM messages m JOIN conversations c ON "
            "m.conversation_id = c.id JOIN users u ON c.user_id = u.id "
            "WHERE m.status = 'pending' ORDER BY m.id")
        return [(_msg(r[:13]), r[13], r[14], r[15]) for r in rows]

    # ---- feedback and corrections ---------------------------------------------------------
    async def set_feedback(self, message_id: int, user_id: int, value: int) -> None:
        if value not in (-1, 1):
            raise ValueError("feedback value must be 1 or -1")
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO feedback (message_id, user_id, value, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at",
                (message_id, user_id, value, now, now))

    async def get_feedback(self, message_id: int) -> int | None:
        rows = list(await self.db.execute_fetchall(
            "SELECT value FROM feedback WHERE message_id = ?", (message_id,)))
        return int(rows[0][0]) if rows else None

    async def add_correction(self, message_id: int, user_id: int, text: str) -> int:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO corrections (message_id, user_id, text, created_at) "
                "VALUES (?, ?, ?, ?)",
                (message_id, user_id, text, time.time()))
            return int(cur.lastrowid or 0)

    async def training_conversations(self) -> list[dict[str, Any]]:
        """Every conversation of users who did not opt out, with feedback and corrections.

        Returns ``[{"id", "user_id", "messages": [{"id", "role", "text", "created_at",
        "sources", "feedback", "correction"}]}]`` for the dataset builder.
        """
        rows = await self.db.execute_fetchall(
            "SELECT c.id, c.user_id, m.id, m.role, m.text, m.created_at, m.sources, f.value, "
            "(SELECT text FROM corrections k WHERE k.message_id = m.id ORDER BY k.id DESC LIMIT 1) "
            "FROM conversations c JOIN users u ON c.user_id = u.id "
            "JOIN messages m ON m.conversation_id = c.id "
            "LEFT JOIN feedback f ON f.message_id = m.id "
            "WHERE u.opted_out = 0 AND m.status = 'done' ORDER BY c.id, m.id")
        convs: dict[int, dict[str, Any]] = {}
        for r in rows:
            conv = convs.setdefault(r[0], {"id": r[0], "user_id": r[1], "messages": []})
            conv["messages"].append({"id": r[2], "role": r[3], "text": r[4], "created_at": r[5],
                                     "sources": json.loads(r[6] or "[]"), "feedback": r[7],
                                     "correction": r[8]})
        return list(convs.values())

    # ---- training runs -------------------------------------------------------------------
    async def start_run(self, trigger: str = "manual") -> int:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO training_runs (started_at, trigger, status) VALUES (?, ?, 'running')",
                (time.time(), trigger))
            return int(cur.lastrowid or 0)

    async def finish_run(self, run_id: int, status: str, *, version: str | None = None,
                         parent: str | None = None, summary: str = "",
                         report: dict[str, Any] | None = None) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE training_runs SET finished_at = ?, status = ?, version = ?, parent = ?, "
                "summary = ?, report = ? WHERE id = ?",
                (time.time(), status, version, parent, summary,
                 json.dumps(report or {}, ensure_ascii=False, default=str), run_id))

    async def fail_stale_runs(self) -> int:
        """Mark runs left 'running' by a crashed process as failed."""
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE training_runs SET status = 'failed', finished_at = ?, "
                "summary = 'interrupted (process stopped during training)' "
                "WHERE status = 'running'", (time.time(),))
            return cur.rowcount

    async def runs(self, limit: int = 10) -> list[TrainingRun]:
        rows = await self.db.execute_fetchall(
            "SELECT id, started_at, finished_at, trigger, status, version, parent, summary, report "
            "FROM training_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [TrainingRun(id=r[0], started_at=r[1], finished_at=r[2], trigger=r[3], status=r[4],
                            version=r[5], parent=r[6], summary=r[7] or "",
                            report=json.loads(r[8] or "{}")) for r in rows]

    # ---- audit, kv, stats ----------------------------------------------------------------
    async def audit(self, platform: str, actor: str, action: str, args: str, allowed: bool,
                    result: str = "") -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO audit (at, platform, actor, action, args, allowed, result) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), platform, str(actor), action, args[:500], int(allowed), result[:500]))

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        rows = await self.db.execute_fetchall(
            "SELECT at, platform, actor, action, args, allowed, result FROM audit "
            "ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry(at=r[0], platform=r[1], actor=r[2], action=r[3], args=r[4],
                           allowed=bool(r[5]), result=r[6]) for r in rows]

    async def kv_get(self, key: str) -> str | None:
        rows = list(await self.db.execute_fetchall("SELECT value FROM kv WHERE key = ?", (key,)))
        return str(rows[0][0]) if rows else None

    async def kv_set(self, key: str, value: str) -> None:
        async with self.transaction() as db:
            await db.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value", (key, value))

    async def stats(self) -> StoreStats:
        out = {}
        for name in ("users", "conversations", "messages", "feedback", "corrections"):
            rows = list(await self.db.execute_fetchall(f"SELECT COUNT(*) FROM {name}"))
            out[name] = int(rows[0][0])
        return StoreStats(**out)

    async def delete_older_than(self, cutoff: float) -> int:
        """Retention: delete conversations whose last message is older than ``cutoff``."""
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM conversations WHERE id IN (SELECT c.id FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id "
                "HAVING COALESCE(MAX(m.created_at), c.started_at) < ?)", (cutoff,))
            return cur.rowcount

    # ---- knowledge-base sources (rag/) -----------------------------------------------------
    _KB_COLS = ("source", "content_hash", "size", "chunks", "ingested_at", "ingested_by")

    async def kb_source(self, source: str) -> KbSource | None:
        rows = list(await self.db.execute_fetchall(
            f"SELECT {', '.join(self._KB_COLS)} FROM kb_sources WHERE source = ?", (source,)))
        return KbSource(*rows[0]) if rows else None

    async def kb_sources(self, ingested_by: str | None = None) -> list[KbSource]:
        sql = f"SELECT {', '.join(self._KB_COLS)} FROM kb_sources"
        args: tuple[Any, ...] = ()
        if ingested_by is not None:
            sql, args = sql + " WHERE ingested_by = ?", (ingested_by,)
        rows = await self.db.execute_fetchall(sql + " ORDER BY source", args)
        return [KbSource(*r) for r in rows]

    async def kb_upsert_source(self, source: str, content_hash: str, size: int, chunks: int,
                               ingested_by: str = "") -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO kb_sources (source, content_hash, size, chunks, ingested_at, "
                "ingested_by) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
                "content_hash = excluded.content_hash, size = excluded.size, "
                "chunks = excluded.chunks, ingested_at = excluded.ingested_at, "
                "ingested_by = excluded.ingested_by",
                (source, content_hash, size, chunks, time.time(), ingested_by))

    async def kb_delete_source(self, source: str) -> bool:
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM kb_sources WHERE source = ?", (source,))
            return cur.rowcount > 0

    async def kb_signature(self) -> tuple[int, float, int]:
        """(sources, latest ingest time, total chunks): changes whenever the knowledge base does."""
        rows = list(await self.db.execute_fetchall(
            "SELECT COUNT(*), COALESCE(MAX(ingested_at), 0), COALESCE(SUM(chunks), 0) "
            "FROM kb_sources"))
        return int(rows[0][0]), float(rows[0][1]), int(rows[0][2])
