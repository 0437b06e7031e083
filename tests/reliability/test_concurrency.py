"""Concurrent processes and tasks cannot hurt each other (issue #19 item 7, L7, L8, L19): real
flock locks held by real child processes, the real `nightowl` CLI, real Chroma and SQLite.

Where a step is too slow for a test (training a model, converting the embedded GGUF), a small
fake stands in for that one step and the locking, pointer and rename code around it is the real
one. Power loss cannot be simulated: durability is checked by recording which paths are fsynced.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from data.config import StorageConfig
from data.store import Store
from llm.fake import FakeChatModel
from rag.base import CorrectionNote
from rag.fake import HashEmbedder
from rag.knowledge import Knowledge, open_knowledge
from tests.fakes.training_data import FACT_QA, seed_chat, write_adapter_files
from tests.reliability.test_storage_lock import ROOT, hold, nightowl
from training import cycle as cycle_mod
from training import service as service_mod
from training.cycle import run_cycle
from training.job import TrainJob, TrainResult, TrainStats
from training.outcome import CycleResult
from training.registry import Registry
from training.service import LearningService

# ---- the knowledge base: reindex never deletes the only copy, a running bot follows it --------


class Crash(BaseException):
    """A crash injected after a Chroma write (not an Exception: nothing may swallow it)."""


class CrashAfter:
    """Counts Chroma writes (client- and collection-level) and crashes right after the n-th."""

    CLIENT = {"delete_collection", "create_collection", "get_or_create_collection"}
    COLLECTION = {"add", "upsert", "delete", "modify", "update"}

    def __init__(self) -> None:
        self.at: int | None = None
        self.done = 0

    def step(self) -> None:
        self.done += 1
        if self.at is not None and self.done == self.at:
            raise Crash(f"crash after write {self.done}")

    def wrap(self, obj: Any, methods: set[str]) -> Any:
        counter = self

        class Proxy:
            def __getattr__(self, name: str) -> Any:
                real = getattr(obj, name)
                if not callable(real):
                    return real

                def call(*args: Any, **kwargs: Any) -> Any:
                    out = real(*args, **kwargs)
                    if name in ("get_or_create_collection", "create_collection",
                                "get_collection"):
                        out = counter.wrap(out, CrashAfter.COLLECTION)
                    if name in methods:
                        counter.step()
                    return out
                return call
        return Proxy()


FACT = "# Boiler\n\nThe boiler in the basement is serviced every March by Vantor.\n"
NOTE = CorrectionNote(answer_id=7, owner_id=1, corrector_id=1, question="Who services the boiler?",
                      text="Vantor services the boiler.", by="admin", at=1.0)


async def _seeded(cfg: Config, store: Store, tmp_path: Path) -> int:
    doc = tmp_path / "boiler.md"
    doc.write_text(FACT + "\n## Keys\n\nThe basement key hangs in the porter's lodge.\n")
    kb = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
    await kb.ingest([doc])
    await kb.add_note(NOTE)
    n = await kb.count()
    await kb.aclose()
    return n


async def _searchable(kb: Knowledge, n: int) -> None:
    assert await kb.count() == n
    assert await kb.note_count() == 1
    found = await kb.search("When is the boiler in the basement serviced?")
    assert any("every March" in p.text for p in found), found
    noted = await kb.search(NOTE.question)
    assert noted and noted[0].text == NOTE.passage_text(), noted  # the note, first


async def test_reindex_crashing_after_any_write_leaves_a_searchable_knowledge_base(
        cfg: Config, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.knowledge as knowledge_mod

    n = await _seeded(cfg, store, tmp_path)
    real_make_client = knowledge_mod.make_client
    crashes = 0
    for at in range(1, 60):
        counter = CrashAfter()
        monkeypatch.setattr(knowledge_mod, "make_client", lambda *a, c=counter: c.wrap(
            real_make_client(*a), CrashAfter.CLIENT))
        kb = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
        monkeypatch.setattr(knowledge_mod, "make_client", real_make_client)
        counter.at, counter.done = at, 0
        try:
            await kb.reindex()
        except Crash:
            crashes += 1
        else:
            break
        finally:
            await kb.aclose()
        restarted = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
        await _searchable(restarted, n)  # the next start finds everything, whatever step died
        await restarted.aclose()
    else:
        pytest.fail("the reindex never completed")
    assert crashes >= 6  # every write of both collections was a crash point
    done = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
    await _searchable(done, n)
    names = sorted(c.name for c in done._chunks.client.list_collections())
    await done.aclose()
    # leftovers of the crashed runs are gone: one collection each plus their pointers
    assert len(names) == 4, names


async def test_an_interrupted_reindex_keeps_the_old_collection_for_the_running_bot(
        cfg: Config, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = await _seeded(cfg, store, tmp_path)
    bot = await open_knowledge(cfg, store, embedder=HashEmbedder(64))  # the running bot
    admin = await open_knowledge(cfg, store, embedder=HashEmbedder(64))  # the console's reindex
    calls = 0
    real_embed = admin.embedder.embed

    def embed_then_fail(texts: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("the embedder died in the middle of the reindex")
        return real_embed(texts)
    monkeypatch.setattr(admin._ingest.embedder, "embed", embed_then_fail)
    monkeypatch.setattr("rag.ingest.ADD_BATCH", 1)
    with pytest.raises(RuntimeError, match="in the middle"):
        await admin.reindex()
    assert calls == 2
    monkeypatch.setattr(admin._ingest.embedder, "embed", real_embed)
    await _searchable(bot, n)
    await _searchable(admin, n)
    await bot.aclose()
    await admin.aclose()


async def test_a_running_bot_follows_a_reindex_made_elsewhere(cfg: Config, store: Store,
                                                              tmp_path: Path) -> None:
    n = await _seeded(cfg, store, tmp_path)
    # The bot started after [rag] embedding_model changed: keyword-only until a reindex.
    bot = await open_knowledge(cfg, store, embedder=HashEmbedder(128))
    assert bot.needs_reindex
    assert await bot.search("boiler basement serviced")  # its mirror is loaded
    admin = await open_knowledge(cfg, store, embedder=HashEmbedder(128))
    assert await admin.reindex() == n
    assert admin.collection.name != "knowledge"  # a new collection, the old one deleted
    # The bot uses the new collection: no error, dense search again, notes matched again.
    assert await bot.count() == n
    assert not bot.needs_reindex and bot.collection.name == admin.collection.name
    await _searchable(bot, n)
    await bot.aclose()
    await admin.aclose()


# ---- the ACTIVE pointer: /rollback never waits for training, a rollback is never overwritten ---


class BlockedCycle:
    """Stands in for run_cycle in LearningService: a training run blocked on an event."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, cfg: Config, store: Any, **kw: Any) -> CycleResult:
        self.started.set()
        await self.release.wait()
        return CycleResult("skipped", 1, "skipped: test")


def _adapter(reg: Registry, status: str = "promoted", **meta: Any) -> str:
    return reg.register(write_adapter_files(reg.staging_dir()), {"status": status, **meta})


async def test_rollback_and_approval_complete_while_a_training_run_is_in_progress(
        cfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    cycle = BlockedCycle()
    monkeypatch.setattr(service_mod, "run_cycle", cycle)
    reg = Registry(cfg.storage.path)
    v1, v2 = _adapter(reg), _adapter(reg)
    reg.set_active(v2)
    model = FakeChatModel()
    svc = LearningService(cfg, store, model)
    await svc.activate_on_start()
    training = asyncio.create_task(svc.retrain("admin"))
    await cycle.started.wait()
    assert svc.running
    text = await asyncio.wait_for(svc.rollback(None), 30)  # not after the run: now
    assert "now v0001" in text and reg.active() == v1 and model.active_adapter == v1
    v3 = _adapter(reg, "waiting")
    assert "is now the active adapter" in await asyncio.wait_for(svc.approve_candidate("a"), 30)
    assert reg.active() == v3 and model.active_adapter == v3
    assert svc.running and not training.done()
    cycle.release.set()
    assert "skipped: test" in (await training).text


@pytest.fixture
def tcfg(tmp_path: Path, embedded_model_dir: Path) -> Config:
    return Config().replace(storage=StorageConfig(dir=str(tmp_path / "var")),
                            model__backend="fake", model__name=str(embedded_model_dir),
                            training__min_examples=1, training__base_replay=0)


def fake_child(during: Callable[[], Any] | None = None) -> Callable[..., Any]:
    """Stands in for the training child: writes an adapter that passes the gate; ``during`` runs
    while it "trains" (what another process does meanwhile)."""
    async def train(cfg: Any, job: TrainJob, **kw: Any) -> TrainResult:
        write_adapter_files(Path(job.adapter_out))
        if during is not None:
            await asyncio.to_thread(during)
        scores = {"heldout": {"candidate": {"loss": 1.0, "accuracy": 0.6},
                              "reference": {"loss": 2.0, "accuracy": 0.4}}}
        return TrainResult("fake", TrainStats([[1, 1.0]], 1.0, 0.1, 1.0, 1, 1.0, 1), scores,
                           100.0, 0.1, 1)
    return train


async def test_a_run_does_not_promote_over_a_cli_rollback_made_during_it(
        tcfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = tcfg.storage.path
    reg = Registry(storage)
    v1, v2 = _adapter(reg), _adapter(reg)
    reg.set_active(v2)
    for i, (q, a) in enumerate(FACT_QA[:4]):
        await seed_chat(store, [(q, "I don't know.")], user=f"u{i}", feedback=-1, correction=a)
    rolled: list[subprocess.CompletedProcess[str]] = []
    monkeypatch.setattr(cycle_mod, "train_in_child", fake_child(
        lambda: rolled.append(nightowl(storage, "rollback", v1))))  # the operator, meanwhile
    model = FakeChatModel()
    result = await run_cycle(tcfg, store, model=model, say=lambda s: None)
    assert rolled[0].returncode == 0, rolled[0].stderr
    assert result.status == "rejected" and result.version == "v0003", result.text()
    assert "not promoted: the active adapter changed during the run (v0002 -> v0001" \
        in result.summary
    assert reg.active() == v1 and model.active_adapter is None  # the rollback stands
    run = (await store.runs(1))[0]
    assert run.status == "rejected" and "changed during the run" in run.summary
    assert reg.meta("v0003")["status"] == "rejected"
    # Without a rollback meanwhile the same run promotes: the refusal above was the rollback's.
    for i, (q, a) in enumerate(FACT_QA[4:8]):
        await seed_chat(store, [(q, "No idea.")], user=f"w{i}", feedback=-1, correction=a)
    monkeypatch.setattr(cycle_mod, "train_in_child", fake_child())
    again = await run_cycle(tcfg, store, model=model, say=lambda s: None)
    assert again.status == "promoted", again.text()
    assert reg.active() == "v0004" == model.active_adapter


async def test_the_training_lock_is_held_across_processes(cfg: Config, store: Store,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    storage = cfg.storage.path
    trainer = hold(storage, "train")  # `nightowl train` in another process, mid-run
    try:
        svc = LearningService(cfg, store, FakeChatModel())
        out = await svc.retrain("admin")
        assert "another training run is in progress" in out.text
        res = nightowl(storage, "train")  # a third process is refused the same way
        assert res.returncode == 0, res.stderr
        assert "Training not started" in res.stdout and "in progress" in res.stdout, res.stdout
        assert await store.runs(1) == []  # nobody started a run beside the live one
        # a rollback does not need the training lock
        reg = Registry(storage)
        v1 = _adapter(reg)
        assert nightowl(storage, "rollback", v1).returncode == 0 and reg.active() == v1
    finally:
        trainer.kill()
        trainer.wait()
    called: list[str] = []

    async def cycle(*a: Any, **kw: Any) -> CycleResult:
        called.append("ran")
        return CycleResult("skipped", 1, "skipped: test")
    monkeypatch.setattr(cycle_mod, "_cycle", cycle)
    assert (await run_cycle(cfg, store, say=lambda s: None)).summary == "skipped: test"
    assert called == ["ran"]  # the dead holder's lock went with it


# ---- retention keeps rollback targets ------------------------------------------------------


def test_retention_after_many_rejected_runs_keeps_the_promoted_versions(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    promoted = [_adapter(reg) for _ in range(3)]
    reg.set_active(promoted[-1])
    rejected = [_adapter(reg, "rejected") for _ in range(12)]  # 12 > keep_adapters nights
    waiting = _adapter(reg, "waiting")
    deleted = reg.prune(10)
    assert deleted == rejected[:3]  # rejected ones go first, oldest first
    assert set(reg.versions()) == {*promoted, *rejected[3:], waiting}
    assert reg.rollback() == (promoted[2], promoted[1])
    assert reg.rollback() == (promoted[1], promoted[0])  # every rollback target is still there
    # With little room: the newest promoted stay, then the active one and its rollback target.
    reg.set_active(promoted[2])
    assert reg.prune(1) == rejected[3:]
    assert set(reg.versions()) == {*promoted, waiting}


# ---- restore: refused while a bot runs, never writes to the backup -------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_restore_is_refused_while_a_bot_runs_and_leaves_the_backup_unchanged(
        tmp_path: Path) -> None:
    storage = tmp_path / "var"
    async with Store(storage / "nightowl.db") as live:
        await live.kv_set("marker", "before")
        await live.backup(tmp_path / "backup.db")
        await live.kv_set("marker", "after")
    backup = tmp_path / "backup.db"
    db = sqlite3.connect(backup)  # as copied by other tools: a rollback journal
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    before = _sha(backup)
    bot = hold(storage, "serve")
    try:
        res = nightowl(storage, "restore", str(backup))
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert "in use by nightowl run (pid" in res.stderr and "Stop it first" in res.stderr
    finally:
        bot.kill()
        bot.wait()
    async with Store(storage / "nightowl.db") as live:
        assert await live.kv_get("marker") == "after"  # untouched
    res = nightowl(storage, "restore", str(backup))
    assert res.returncode == 0, res.stderr
    assert _sha(backup) == before  # the backup was copied, never opened for writing
    assert not Path(f"{backup}-wal").exists() and not Path(f"{backup}-shm").exists()
    async with Store(storage / "nightowl.db") as restored:
        assert await restored.kv_get("marker") == "before"
        assert await restored.integrity_check() == "ok"


# ---- durability ----------------------------------------------------------------------------


def test_adapters_and_active_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    reg = Registry(tmp_path)
    staged = write_adapter_files(reg.staging_dir())
    version = reg.register(staged, {"status": "promoted"})
    published = events.index(("replace", str(reg.path(version))))
    synced = {p for kind, p in events[:published] if kind == "fsync"}
    assert {str(staged / "adapter_model.safetensors"), str(staged / "adapter_config.json"),
            str(staged)} <= synced
    assert any(Path(p).name.startswith(".meta.json.") for p in synced)  # written atomically
    assert ("fsync", str(reg.root)) in events[published:]
    events.clear()
    reg.set_active(version)
    moved = events.index(("replace", str(reg.pointer)))
    assert any(k == "fsync" and Path(p).name.startswith(".ACTIVE.") for k, p in events[:moved])
    assert ("fsync", str(reg.root)) in events[moved:]  # the rename itself is durable


async def test_commits_are_durable_in_wal_mode(tmp_path: Path) -> None:
    async with Store(tmp_path / "nightowl.db") as store:
        rows = list(await store.db.execute_fetchall("PRAGMA synchronous"))
        mode = list(await store.db.execute_fetchall("PRAGMA journal_mode"))
    assert mode[0][0] == "wal" and rows[0][0] == 2  # FULL: the WAL is fsynced at each commit


# ---- first-run conversion of the embedded model by two processes ---------------------------


def converter(storage: Path, block: bool) -> subprocess.Popen[str]:
    """A process running the real ensure_embedded_model with a fast fake conversion (the real
    one takes ~20 s); ``block``: the conversion waits for a line on stdin before finishing."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        import llm.embedded as e

        def convert(src, out):
            with open({str(storage / "conversions.log")!r}, "a") as log:
                log.write(f"{{os.getpid()}}\\n")
            (out / "config.json").write_text("{{}}")
            (out / "model.safetensors").write_bytes(b"weights")
            if {block!r}:
                print("converting", flush=True)
                sys.stdin.readline()
        e._convert = convert
        e.gguf_path = lambda: Path("SmolLM2.gguf")
        target = e.ensure_embedded_model(Path({str(storage)!r}), say=lambda s: print(s, flush=True))
        print("ready", sorted(p.name for p in target.iterdir()), flush=True)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_two_processes_converting_the_embedded_model_do_not_remove_each_other(
        tmp_path: Path) -> None:
    storage = tmp_path / "var"
    first = converter(storage, block=True)
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None and first.stdin is not None
        assert first.stdout.readline().startswith("Preparing the embedded model")
        assert first.stdout.readline().strip() == "converting"  # mid-conversion, lock held
        second = converter(storage, block=False)
        assert second.stdout is not None
        # it waits for the first instead of converting (and later removing the folder)
        assert "Another NightOwl process is preparing" in second.stdout.readline()
        first.stdin.write("go\n")
        first.stdin.flush()
        out1, _ = first.communicate(timeout=120)
        out2, _ = second.communicate(timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0 and second.returncode == 0
    assert "ready ['config.json', 'model.safetensors']" in out1
    assert "ready ['config.json', 'model.safetensors']" in out2
    assert len((storage / "conversions.log").read_text().split()) == 1  # converted once
    assert not list((storage / "models").glob(".convert-*"))
