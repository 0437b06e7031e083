"""The one SQLite connection (aiosqlite, WAL, foreign keys) and its one write path.

:meth:`Connection.transaction` is the only way anything writes: ``BEGIN IMMEDIATE ... COMMIT``
under one asyncio lock (every task shares the connection, so transactions must not interleave),
rolled back on any error. ``secure_delete`` is on, so deleted rows do not stay readable in free
pages; :meth:`Connection.checkpoint` empties the ``-wal``. The table modules (users,
conversations, feedback, runs, kb) build on this class; :class:`data.store.Store` combines them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import aiosqlite

from data.errors import StoreError
from data.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 10_000
CHECKPOINT_WAIT_MS = 1_000  # the checkpoint holds the write lock: chats wait at most this


class Connection:
    """Opens, migrates, backs up and checks the database; use as ``async with``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        # one connection is shared by every task: transactions must not interleave
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
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
            # FULL: a commit is on disk when it returns (NORMAL could lose the last commits on
            # a power loss, e.g. a message the platform was already told is stored)
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # deleted rows are overwritten with zeros, not left in free pages (/forget, retention)
            await self._db.execute("PRAGMA secure_delete=ON")
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

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it (after /forget and retention, so
        deleted text is not left in the ``-wal``); False if a reader kept it from finishing."""
        async with self._write_lock:  # a reader in another process waits it out for <= 1 s
            await self.db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            try:
                rows = list(await self.db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
            finally:
                await self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return not rows or int(rows[0][0]) == 0

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
