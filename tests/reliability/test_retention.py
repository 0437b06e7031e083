"""Retention (``[privacy] retention_days``) on a real SQLite file and real folders: expired
conversations leave the store in batches that let chats write in between, and their records,
old run folders, exports, upload copies and rotated logs leave the disk; adapters stay."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from bot.config import Config
from data.store import Store
from tests.fakes.training_data import seed_chat
from training.dataset import export_jsonl
from training.retention import apply_retention

DAY = 86400.0


def age(path: Path, days: float) -> None:
    """Back-date ``path`` and everything in it."""
    when = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))


async def test_retention_prunes_the_store_runs_exports_uploads_and_logs(cfg: Config,
                                                                         store: Store) -> None:
    await seed_chat(store, [("Where is the old archive?", "In the basement.")], user="old",
                    age_s=40 * DAY)
    await seed_chat(store, [("Where is the new wing?", "Behind the cafe.")], user="new")
    root = cfg.storage.path
    # a recent run's dataset holds both: only the expired conversation's record goes
    recent = root / "runs" / "20260101-000000-run0002"
    recent.mkdir(parents=True)
    n, _ = await export_jsonl(cfg, store, recent / "train.jsonl")
    assert n == 2
    (recent / "job.json").write_text(json.dumps(
        {"report_questions": ["Where is the old archive?", "Where is the new wing?"]}))
    old_run = root / "runs" / "20250101-000000-run0001"
    old_run.mkdir(parents=True)
    (old_run / "train.jsonl").write_text('{"messages": []}\n')
    (old_run / "job.json").write_text("{}")
    age(old_run, 60)
    odd_run = root / "runs" / "20250101-000000-run0000"  # holds adapter weights: kept
    (odd_run / "out").mkdir(parents=True)
    (odd_run / "out" / "adapter_config.json").write_text("{}")
    age(odd_run, 60)
    cache = root / "runs" / "regression-base.json"
    cache.write_text("{}")
    age(cache, 60)
    adapter = root / "adapters" / "v0001"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (root / "adapters" / "ACTIVE").write_text("v0001")
    age(root / "adapters", 60)
    old_export = root / "exports" / "old.jsonl"
    old_export.parent.mkdir(parents=True)
    old_export.write_text('{"messages": []}\n')
    age(old_export, 60)
    uploads = root / "uploads" / "telegram_1"
    uploads.mkdir(parents=True)
    (uploads / "old.md").write_text("old notes")
    (uploads / "new.md").write_text("new notes")
    age(uploads / "old.md", 60)
    logs = root / "logs"
    logs.mkdir()
    for name in ("nightowl.log", "nightowl.log.1", "nightowl.log.2"):
        (logs / name).write_text("a log line\n")
    age(logs / "nightowl.log", 60)
    age(logs / "nightowl.log.1", 60)

    report = await apply_retention(store, root, 30)

    assert (report.conversations, report.records, report.run_folders) == (1, 2, 1)
    assert (report.exports, report.uploads, report.logs) == (1, 1, 1)
    stats = await store.stats()
    assert (stats.conversations, stats.messages) == (1, 2)
    lines = [json.loads(x) for x in (recent / "train.jsonl").read_text().splitlines()]
    assert [r["messages"][-2]["content"] for r in lines] == ["Where is the new wing?"]
    job = json.loads((recent / "job.json").read_text())
    assert job["report_questions"] == ["Where is the new wing?"]
    assert not old_run.exists() and not old_export.exists()
    assert (odd_run / "out" / "adapter_config.json").exists() and cache.exists()
    assert (adapter / "adapter_config.json").exists()
    assert (root / "adapters" / "ACTIVE").read_text() == "v0001"
    assert not (uploads / "old.md").exists() and (uploads / "new.md").exists()
    assert sorted(p.name for p in logs.iterdir()) == ["nightowl.log", "nightowl.log.2"]
    assert await apply_retention(store, root, 0) == type(report)()  # 0 = keep forever


async def test_retention_deletes_in_batches_and_a_chat_writes_between_them(
        cfg: Config, store: Store) -> None:
    """L18: with a backlog, the store is pruned in bounded transactions; after the first one a
    chat's write goes through while expired conversations are still left."""
    for i in range(5):
        await seed_chat(store, [(f"old question {i}", "old answer")], user=f"u{i}",
                        age_s=40 * DAY)
    live = await store.ensure_user("terminal", "live", "live")
    conv = await store.active_conversation(live.id, "terminal", "chat-live")
    first_batch, wrote = asyncio.Event(), asyncio.Event()
    left_when_chat_wrote: list[int] = []

    async def between_batches() -> None:
        first_batch.set()
        await wrote.wait()

    async def chat() -> None:
        await first_batch.wait()
        await store.add_message(conv, "user", "hello while pruning")
        rows = list(await store.db.execute_fetchall(
            "SELECT COUNT(*) FROM messages WHERE text LIKE 'old question%'"))
        left_when_chat_wrote.append(int(rows[0][0]))
        wrote.set()

    writer = asyncio.create_task(chat())
    try:
        report = await apply_retention(store, cfg.storage.path, 30, batch=2,
                                       pause=between_batches)
        assert writer.done(), "no chat could write while retention ran"
    finally:
        writer.cancel()
    assert report.conversations == 5
    assert left_when_chat_wrote == [3]  # one batch of 2 was deleted, 3 still to go
    assert (await store.stats()).messages == 1
