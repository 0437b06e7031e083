"""Training runs, the admin audit log and the small key-value table.

A run is recorded ``running`` when it starts and finished with its outcome; a process that died
mid-run leaves it ``running``, and :meth:`RunTables.fail_stale_runs` marks it failed at the next
start. Audit arguments and results are capped at 500 characters.
"""

from __future__ import annotations

import json
import time
from typing import Any

from data.connection import Connection
from data.rows import AuditEntry, TrainingRun


class RunTables(Connection):
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

    async def set_run_report(self, run_id: int, report: dict[str, Any]) -> None:
        """Rewrite one run's report (``/forget`` removes a user's sampled questions from it)."""
        async with self.transaction() as db:
            await db.execute("UPDATE training_runs SET report = ? WHERE id = ?",
                             (json.dumps(report, ensure_ascii=False, default=str), run_id))

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

    # ---- audit and kv --------------------------------------------------------------------
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
