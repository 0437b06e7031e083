"""/forget end to end: afterwards no row, chunk or dataset line of that user remains."""

from __future__ import annotations

import json
from pathlib import Path

from bot.config import Config
from bot.core import Attachment, CollectingRenderer, Core, Incoming
from data.store import Store
from llm.fake import FakeChatModel
from rag.knowledge import open_knowledge
from training.dataset import export_jsonl
from training.service import LearningService

SECRETIVE = "my locker code is 4411 and the wifi is owlnet"
KEEPER = "what time does the library open?"


def attachment(name: str, data: bytes) -> Attachment:
    async def fetch() -> bytes:
        return data

    return Attachment(name, len(data), fetch)


async def test_forget_removes_rows_chunks_and_dataset_lines(cfg: Config, store: Store,
                                                            tmp_path: Path) -> None:
    cfg = cfg.replace(rag__embedding_model="fake", rag__sample_on_first_run=False,
                      limits__user_messages_per_minute=0.0)
    kb = await open_knowledge(cfg, store)
    learning = LearningService(cfg, store, FakeChatModel())
    core = Core(cfg, store, FakeChatModel(), kb, learning)
    try:
        alice = Incoming("telegram", "100", "100", "Alice", SECRETIVE, is_admin=True)
        bob = Incoming("telegram", "200", "200", "Bob", KEEPER)
        for inc in (alice, bob):
            await core.handle(inc, CollectingRenderer())
            await core.command(inc, "good")
        upload = await core.command(
            Incoming("telegram", "100", "100", "Alice", "/ingest", is_admin=True,
                     attachments=(attachment("alice-notes.md", b"# Notes\nZorblax 9000 is "
                                             b"Alice's private project codename.\n"),)),
            "ingest")
        assert upload.ok and "added" in upload.text
        assert [p.source for p in await kb.search("Zorblax 9000 codename")]
        # a dataset file written by a run in progress / an export
        n, _ = await export_jsonl(cfg, store, cfg.storage.path / "exports" / "d.jsonl")
        assert n == 2
        run_file = cfg.storage.path / "runs" / "0001" / "train.jsonl"
        run_file.parent.mkdir(parents=True)
        run_file.write_text((cfg.storage.path / "exports" / "d.jsonl").read_text())

        done = await core.forget(alice)
        assert "Deleted 2 messages" in done.text and "1 uploaded document" in done.text

        assert await store.get_user("telegram", "100") is None
        rows: list[str] = []
        for table in ("messages", "corrections", "feedback", "users"):
            rows += [str(r) for r in await store.db.execute_fetchall(f"SELECT * FROM {table}")]
        dump = "\n".join(rows)
        assert "locker" not in dump and "Alice" not in dump and KEEPER in dump
        assert not await kb.search("Zorblax 9000 codename")
        assert all("alice" not in s.source for s in await kb.sources())
        for path in (run_file, cfg.storage.path / "exports" / "d.jsonl"):
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            assert len(lines) == 1, path
            assert "locker" not in json.dumps(lines) and KEEPER in json.dumps(lines)
        assert not list((cfg.storage.path / "uploads").rglob("alice-notes*"))
    finally:
        await kb.aclose()
