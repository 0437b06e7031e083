"""``[privacy] retention_days``: conversations older than that leave the store and the files.

One pass (:func:`apply_retention`, run by the bot's housekeeping):

1. the store deletes expired conversations in bounded batches (``Store.expire_batch``), yielding to
   the event loop between batches, so chats keep writing while a large backlog is pruned;
2. the expired messages' records leave the dataset files of ``runs/`` and ``exports/`` by id
   (``training.forget``), their questions leave the questions sampled into run reports (job,
   report, adapter ``meta.json``, the runs in the store; by text, these carry no ids), and the
   WAL is checkpointed;
3. files older than the cutoff go: whole run folders under ``runs/`` (datasets, job and report),
   exports, upload copies under ``uploads/`` (the knowledge base keeps the passages: remove a
   document with ``nightowl kb remove``), and rotated log files (the live ``nightowl.log`` is
   rotated by size, never deleted under the running logger).

Never deleted: ``adapters/`` (the registry, ACTIVE and every version), any folder holding adapter
weights, the runs' shared caches (``runs/*.json``) and the run lock. File work runs off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from data.store import Store
from data.users import Forgotten
from training.forget import needles_of, purge_dataset_lines
from training.forget_runs import purge_questions, purge_run_files

log = logging.getLogger("nightowl.training")

BATCH = 200  # conversations per transaction: a few ms of the one write connection
LIVE_LOG = "nightowl.log"
ADAPTER_MARK = "adapter_config.json"


@dataclass
class RetentionReport:
    conversations: int = 0
    messages: int = 0
    records: int = 0  # dataset records and sampled report questions purged
    run_folders: int = 0
    exports: int = 0
    uploads: int = 0
    logs: int = 0

    def summary(self) -> str:
        return (f"{self.conversations} conversations ({self.messages} messages), "
                f"{self.records} dataset records, {self.run_folders} run folders, "
                f"{self.exports} exports, {self.uploads} uploads, {self.logs} log files")

    def __bool__(self) -> bool:
        return any(vars(self).values())


async def _yield() -> None:
    await asyncio.sleep(0)


async def apply_retention(store: Store, storage: Path, days: int, *, now: float | None = None,
                          batch: int = BATCH,
                          pause: Callable[[], Awaitable[None]] = _yield) -> RetentionReport:
    """Prune everything older than ``days`` (0 = keep forever); ``pause`` runs between store
    batches (the default yields to the loop)."""
    report = RetentionReport()
    if days <= 0:
        return report
    cutoff = (time.time() if now is None else now) - days * 86400
    gone: set[int] = set()
    questions: set[str] = set()
    while True:
        expired = await store.expire_batch(cutoff, batch)
        if not expired.conversations:
            break
        report.conversations += len(expired.conversations)
        gone.update(expired.messages)
        questions.update(expired.questions)
        await pause()
    report.messages = len(gone)
    if gone:
        who = Forgotten(message_ids=frozenset(gone))
        for sub in ("runs", "exports"):
            report.records += await asyncio.to_thread(purge_dataset_lines, storage / sub, who)
        report.records += await _purge_reports(store, storage, needles_of(questions))
    await asyncio.to_thread(prune_files, storage, cutoff, report)
    if gone:
        await store.checkpoint()
    return report


async def _purge_reports(store: Store, storage: Path, needles: set[str]) -> int:
    """The expired questions leave the recent questions sampled into run reports (files, the
    adapters' ``meta.json`` and the runs in the store)."""
    removed = 0
    for sub in ("runs", "adapters"):
        removed += await asyncio.to_thread(purge_run_files, storage / sub, needles)
    for run in await store.runs(limit=100_000):
        report = dict(run.report)
        n = purge_questions(report, needles)
        if n:
            removed += n
            await store.set_run_report(run.id, report)
    return removed


def _newest(path: Path) -> float:
    """The newest modification time of ``path`` or anything in it."""
    times = [path.stat().st_mtime]
    if path.is_dir():
        times += [p.stat().st_mtime for p in path.rglob("*")]
    return max(times)


def _holds_adapter(path: Path) -> bool:
    return any(path.rglob(ADAPTER_MARK))


def prune_files(storage: Path, cutoff: float, report: RetentionReport) -> None:
    """Delete run folders, exports, upload copies and rotated logs older than ``cutoff``."""
    runs = storage / "runs"
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        if folder.is_dir() and not folder.is_symlink() and _newest(folder) < cutoff \
                and not _holds_adapter(folder):
            shutil.rmtree(folder)
            report.run_folders += 1
    for sub, field in (("exports", "exports"), ("uploads", "uploads")):
        root = storage / sub
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                setattr(report, field, getattr(report, field) + 1)
    logs = storage / "logs"
    for path in sorted(logs.iterdir()) if logs.is_dir() else []:
        if path.is_file() and path.name != LIVE_LOG and path.stat().st_mtime < cutoff:
            path.unlink()
            report.logs += 1
