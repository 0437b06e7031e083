"""The knowledge base's source ledger (``rag/`` keeps the chunks in Chroma, this table says
which sources were ingested, with what content hash, how many chunks, by whom)."""

from __future__ import annotations

import time
from typing import Any

from data.connection import Connection
from data.rows import KbSignature, KbSource

_KB_COLS = "source, content_hash, size, chunks, ingested_at, ingested_by"


class KbTables(Connection):
    async def kb_source(self, source: str) -> KbSource | None:
        rows = list(await self.db.execute_fetchall(
            f"SELECT {_KB_COLS} FROM kb_sources WHERE source = ?", (source,)))
        return KbSource(*rows[0]) if rows else None

    async def kb_sources(self, ingested_by: str | None = None) -> list[KbSource]:
        sql = f"SELECT {_KB_COLS} FROM kb_sources"
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

    async def kb_signature(self) -> KbSignature:
        """Sources, latest ingest time, total chunks: changes whenever the knowledge base does."""
        rows = list(await self.db.execute_fetchall(
            "SELECT COUNT(*), COALESCE(MAX(ingested_at), 0), COALESCE(SUM(chunks), 0) "
            "FROM kb_sources"))
        return KbSignature(int(rows[0][0]), float(rows[0][1]), int(rows[0][2]))
