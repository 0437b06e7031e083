"""/forget end to end on a real SQLite file and real files: afterwards no row, chunk, source,
audit argument, dataset line or byte of that user remains; other users' identical lines stay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from bot.config import Config
from bot.core import Attachment, CollectingRenderer, Core, Incoming
from bot.core.bounded import KeyedLocks
from data.store import Store
from llm.base import ChatMessage, GenParams, StreamInfo
from llm.fake import FakeChatModel
from rag.knowledge import Knowledge, open_knowledge
from training.dataset import build_examples, export_jsonl
from training.preferences import preference_rows, write_rows
from training.scrub import scrub
from training.service import LearningService

EMAIL = "alice.hidden@example.com"
SECRETIVE = f"my e-mail is {EMAIL}, which desk handles lost cards?"  # the scrubber changes it
CANNED = "Please ask at the front desk."  # the small model's answer to both users
FIX = "Lost cards are handled at desk 3 on the ground floor."
KEEPER = "what time does the library open?"
THANKS, WELCOME = "thanks", "You're welcome!"
DOC = b"# Notes\nZorblax 9000 is Alice's private project codename.\n"
AUDITED = "Quokkastatus"  # an admin command argument of Alice's


def canned(messages: Sequence[ChatMessage]) -> str:
    last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if last == THANKS:
        return WELCOME
    if "codename" in last:
        return "It is a project codename, see [1]."
    return CANNED


def attachment(name: str, data: bytes) -> Attachment:
    async def fetch() -> bytes:
        return data

    return Attachment(name, len(data), fetch)


def chat(user: str, text: str, chat_id: str | None = None, admin: bool = False) -> Incoming:
    name = {"100": "Alice", "200": "Bob", "300": "Carol"}[user]
    return Incoming("telegram", chat_id or user, user, name, text, is_admin=admin)


@asynccontextmanager
async def bot(cfg: Config, store: Store, model: FakeChatModel | None = None
              ) -> AsyncIterator[tuple[Core, Knowledge]]:
    cfg = cfg.replace(rag__embedding_model="fake", rag__sample_on_first_run=False,
                      limits__user_messages_per_minute=0.0)
    kb = await open_knowledge(cfg, store)
    learning = LearningService(cfg, store, FakeChatModel())
    core = Core(cfg, store, model or FakeChatModel(canned), kb, learning)
    try:
        yield core, kb
    finally:
        await kb.aclose()


async def answer_of(store: Store, platform_user: str, question: str) -> int:
    rows = list(await store.db.execute_fetchall(
        "SELECT a.id FROM messages a JOIN messages q ON a.reply_to = q.id JOIN conversations c "
        "ON c.id = q.conversation_id JOIN users u ON u.id = c.user_id "
        "WHERE u.platform_user_id = ? AND q.text = ?", (platform_user, question)))
    return int(rows[0][0])


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def seed(core: Core, store: Store) -> None:
    """Alice asks with her e-mail (an admin corrects the canned answer) and says thanks
    (unrated); Bob asks, says thanks (👍 both: the same canned turns as Alice's), and asks about
    Alice's uploaded document in another chat (its passage lands in his answer's sources)."""
    alice = chat("100", SECRETIVE, admin=True)
    upload = await core.command(
        Incoming("telegram", "100", "100", "Alice", "/ingest", is_admin=True,
                 attachments=(attachment("alice-notes.md", DOC),)), "ingest")
    assert upload.ok and "added" in upload.text
    await core.handle(alice, CollectingRenderer())
    await core.handle(chat("100", THANKS, admin=True), CollectingRenderer())
    await core.command(alice, "status", AUDITED)
    carol = await store.ensure_user("telegram", "300", "Carol")
    await store.add_correction(await answer_of(store, "100", SECRETIVE), carol.id, FIX, "admin")
    for text, chat_id in ((KEEPER, None), (THANKS, None), ("what is the project codename?", "b")):
        bob = chat("200", text, chat_id)
        reply = CollectingRenderer()
        await core.handle(bob, reply)
        await core.command(bob, "good")
    codename = await store.get_message(await answer_of(store, "200",
                                                       "what is the project codename?"))
    assert codename is not None and any("Zorblax" in s["text"] for s in codename.sources)


@pytest.fixture
async def plain_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Store]:
    """A store on a file, opened as with an SQLite build whose ``secure_delete`` default is off
    (this one's is on), so the store must turn it on itself."""
    real = aiosqlite.connect

    async def connect(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
        db = await real(*args, **kwargs)
        await db.execute("PRAGMA secure_delete=OFF")
        return db

    monkeypatch.setattr(aiosqlite, "connect", connect)
    async with Store(tmp_path / "forget.db") as s:
        yield s


async def test_forget_purges_by_id_everywhere_and_keeps_other_users_lines(
        cfg: Config, plain_store: Store) -> None:
    store = plain_store
    async with bot(cfg, store) as (core, kb):
        await seed(core, store)
        root = cfg.storage.path
        export = root / "exports" / "d.jsonl"
        n, _ = await export_jsonl(cfg, store, export)
        assert n == 4  # Alice's corrected answer, Bob's three
        run = root / "runs" / "0001"
        run.mkdir(parents=True)
        (run / "train.jsonl").write_text(export.read_text())
        examples, _ = build_examples(cfg, await store.training_conversations(), now=0.0)
        prefs, _ = preference_rows("kto", examples, [])
        write_rows(run / "prefs.jsonl", prefs)
        legacy = root / "runs" / "0000" / "train.jsonl"  # written before records had ids
        legacy.parent.mkdir(parents=True)
        legacy.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (
            [{"role": "user", "content": scrub(SECRETIVE).text},
             {"role": "assistant", "content": FIX}],
            [{"role": "user", "content": KEEPER}, {"role": "assistant", "content": "At 9."}])))
        assert EMAIL not in export.read_text() and scrub(SECRETIVE).text in export.read_text()

        done = await core.forget(chat("100", "/forget"))
        assert done.ok and "Deleted 4 messages" in done.text, done.text
        assert "1 uploaded document" in done.text

        assert await store.get_user("telegram", "100") is None
        for path in (export, run / "train.jsonl"):
            lines = records(path)
            questions = [r["messages"][-2]["content"] for r in lines]
            # the scrubbed line and the one built on Alice's document went; Bob's canned
            # "thanks" / front-desk lines (the same turns as Alice's) stayed
            assert sorted(questions) == sorted([KEEPER, THANKS]), (path, questions)
            assert WELCOME in json.dumps(lines) and CANNED in json.dumps(lines)
            assert "Zorblax" not in json.dumps(lines) and "[email]" not in json.dumps(lines)
        assert all(KEEPER in json.dumps(r) or THANKS in json.dumps(r)
                   for r in records(run / "prefs.jsonl"))
        assert [r["messages"][0]["content"] for r in records(legacy)] == [KEEPER]

        codename = await store.get_message(await answer_of(store, "200",
                                                           "what is the project codename?"))
        assert codename is not None and not any("Zorblax" in json.dumps(s)
                                                for s in codename.sources)
        assert not await kb.search("Zorblax 9000 codename")
        assert not list((root / "uploads").rglob("alice-notes*"))
        audit = await store.audit_log(100)
        assert audit and all(a.actor != "100" and AUDITED not in a.args + a.result
                              for a in audit)
        # secure_delete + checkpoint: the bytes are gone from the file and the WAL
        db_path = Path(store.path)
        raw = db_path.read_bytes()
        wal = db_path.with_name(db_path.name + "-wal")
        raw += wal.read_bytes() if wal.exists() else b""
        for needle in (EMAIL, "Zorblax", AUDITED, FIX):
            assert needle.encode() not in raw, needle
        assert KEEPER.encode() in raw


async def test_a_failed_file_purge_is_reported_never_a_plain_deleted(cfg: Config,
                                                                     store: Store) -> None:
    told: list[str] = []

    async def admins(text: str, files: list[Path]) -> None:
        told.append(text)

    async with bot(cfg, store) as (core, kb):
        core.add_admin_notifier(admins)
        await seed(core, store)
        root = cfg.storage.path
        await export_jsonl(cfg, store, root / "exports" / "d.jsonl")
        (root / "runs" / "0002").mkdir(parents=True)
        (root / "runs" / "0002" / "train.jsonl").write_bytes(b"\xff\xfe not text\n")

        async def broken(by: str) -> list[str]:
            raise RuntimeError("chroma is down")

        kb.remove_by_uploader = broken  # type: ignore[method-assign]
        done = await core.forget(chat("100", "/forget"))
        assert not done.ok
        assert "Not deleted yet" in done.text and "training data files" in done.text
        assert "uploaded document(s) in the knowledge base" in done.text
        assert told and "training data files" in told[0] and "knowledge base" in told[0]
        # the readable file was still purged
        assert EMAIL not in (root / "exports" / "d.jsonl").read_text()
        assert scrub(SECRETIVE).text not in (root / "exports" / "d.jsonl").read_text()


class Gated(FakeChatModel):
    """Streams one word, then waits for ``release`` (an answer in flight)."""

    def __init__(self) -> None:
        super().__init__(canned)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = "", info: StreamInfo | None = None) -> AsyncIterator[str]:
        first = True
        async for word in super().stream(messages, params, info=info):
            yield word
            if first:
                first = False
                self.started.set()
                await self.release.wait()


class WatchedLocks(KeyedLocks[tuple[str, str, str]]):
    """Calls ``on_wait`` when a task waits for a key another task holds."""

    def __init__(self, on_wait: Any) -> None:
        super().__init__()
        self.held: set[tuple[str, str, str]] = set()
        self.on_wait = on_wait

    @asynccontextmanager
    async def hold(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
        if key in self.held:
            self.on_wait()
        async with super().hold(key):
            self.held.add(key)
            try:
                yield
            finally:
                self.held.discard(key)


async def test_forget_waits_for_the_answer_in_flight(cfg: Config, store: Store) -> None:
    """L16: /forget takes the user's lock; the answer streaming meanwhile finishes and is
    stored (not "Sorry"), then it is deleted with the rest."""
    model = Gated()
    async with bot(cfg, store, model) as (core, _kb):
        core.locks = WatchedLocks(model.release.set)  # forget waiting for the lock: go on
        at_delete: list[int] = []
        real_forget_user = store.forget_user

        async def forget_user(user_id: int, sources: Any = ()) -> Any:
            rows = list(await store.db.execute_fetchall(
                "SELECT COUNT(*) FROM messages WHERE role = 'assistant'"))
            at_delete.append(int(rows[0][0]))
            model.release.set()  # without the lock forget gets here mid-answer
            return await real_forget_user(user_id, sources)

        store.forget_user = forget_user  # type: ignore[method-assign]
        reply = CollectingRenderer()
        answering = asyncio.create_task(core.handle(chat("100", KEEPER), reply))
        await model.started.wait()
        done = await core.forget(chat("100", "/forget"))
        await answering
        assert at_delete == [1], "forget deleted while the answer was still streaming"
        assert reply.reply is not None and reply.reply.text.startswith(CANNED)
        assert "Deleted 2 messages" in done.text
        assert await store.get_user("telegram", "100") is None


async def test_opted_out_users_corrections_of_others_answers_are_not_trained(
        cfg: Config, store: Store) -> None:
    """L17: an opted-out admin's correction of Bob's answer does not train; Bob's 👍 answer
    does, as it was."""
    async with bot(cfg, store) as (core, _kb):
        bob = chat("200", KEEPER)
        await core.handle(bob, CollectingRenderer())
        await core.command(bob, "good")
        carol = await store.ensure_user("telegram", "300", "Carol")
        await store.add_correction(await answer_of(store, "200", KEEPER), carol.id, FIX, "admin")
        await store.set_opted_out(carol.id, True)
        examples, _ = build_examples(cfg, await store.training_conversations(), now=0.0)
        answers = [e.messages[-1]["content"] for e in examples]
        assert answers == [CANNED]
        await store.set_opted_out(carol.id, False)  # the same correction, author opted in
        examples, _ = build_examples(cfg, await store.training_conversations(), now=0.0)
        assert [e.messages[-1]["content"] for e in examples] == [FIX]
