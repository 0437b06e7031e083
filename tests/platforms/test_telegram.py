"""The real python-telegram-bot against the fake Bot API, with the real Core and SQLite store."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

from bot.config import Config
from bot.core import Core
from bot.core.text import pseudonym, utf16_len
from bot.telegram.adapter import TelegramBot
from bot.telegram.handlers import DOC_HINT, ERROR_REPLY, MEDIA_REPLY
from data.config import StorageConfig
from data.store import Store
from llm.base import ChatMessage
from llm.fake import FakeChatModel
from rag.base import IngestResult, Passage
from rag.fake import FakeRetriever
from rag.knowledge import Knowledge, open_knowledge
from tests.fakes.learning import FakeLearning
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, Sent
from tests.fakes.training_data import write_adapter_files
from training.registry import Registry
from training.service import LearningService

ADMIN, USER, OTHER = 4242, 1111, 2222
INTERVAL = 0.25


class FakeKB:
    """Retrieval from one passage; uploads go to the real knowledge base (``real_kb=True``)."""

    def __init__(self) -> None:
        self.retriever = FakeRetriever([Passage(
            "NightOwl retrains every night at three using LoRA adapters.", "guide.md",
            "Retraining", 0.9, "guide-1")])

    async def search(self, query: str, k: int | None = None) -> list[Passage]:
        return await self.retriever.search(query, k)

    async def ingest_bytes(self, name: str, data: bytes, *, by: str) -> IngestResult:
        raise AssertionError("a test that ingests uses the real knowledge base (real_kb=True)")

    async def count(self) -> int:
        return len(self.retriever.passages)


@dataclass
class Env:
    fake: FakeTelegramAPI
    store: Store
    core: Core
    model: FakeChatModel
    kb: Any  # FakeKB, or the real Knowledge when a test asks for it
    learning: Any  # FakeLearning, or the real LearningService when a test asks for it
    tg: TelegramBot

    async def send(self, update: dict[str, Any]) -> None:
        await self.tg.app.process_update(Update.de_json(update, self.tg.app.bot))

    async def db(self, sql: str, *args: Any) -> list[Any]:
        return list(await self.store.db.execute_fetchall(sql, args))


def make_cfg(tmp_path: Path, fake: FakeTelegramAPI, **kw: Any) -> Config:
    cfg = Config().replace(
        storage=StorageConfig(dir=str(tmp_path / "var")), model__backend="fake",
        telegram__base_url=fake.base_url, telegram__base_file_url=fake.base_file_url,
        telegram__admins=[ADMIN], telegram__stream_edit_interval_s=INTERVAL,
        telegram__group_edit_interval_s=0.05, telegram__poll_timeout_s=1.0,
        telegram__request_timeout_s=3.0, telegram__ack_timeout_s=5.0,
        limits__user_messages_per_minute=0.0, limits__chat_messages_per_minute=0.0)
    return cfg.replace(**kw)


@asynccontextmanager
async def running(tmp_path: Path, fake: FakeTelegramAPI, *, model: FakeChatModel | None = None,
                  polling: bool = False, real_kb: bool = False, real_learning: bool = False,
                  **kw: Any) -> AsyncIterator[Env]:
    """The bot against the fake API; ``real_kb``/``real_learning`` put the real knowledge base
    (hash embedder, Chroma) or the real LearningService behind the core instead of doubles."""
    cfg = make_cfg(tmp_path, fake, **kw)
    model = model or FakeChatModel()
    async with Store(tmp_path / "nightowl.db") as store:
        kb: Any = FakeKB()
        if real_kb:
            kb = await open_knowledge(cfg.replace(rag__embedding_model="fake",
                                                  rag__sample_on_first_run=False), store)
        learning: Any = LearningService(cfg, store, model) if real_learning else FakeLearning()
        core = Core(cfg, store, model, knowledge=kb, learning=learning)
        try:
            async with TelegramBot(cfg.telegram, core, TOKEN, polling=polling) as tg:
                yield Env(fake, store, core, model, kb, learning, tg)
                fake.release()
            await core.wait_background()
        finally:
            if isinstance(kb, Knowledge):
                await kb.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as api:
        yield api


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def words_responder(n: int) -> Any:
    def respond(messages: Sequence[ChatMessage]) -> str:
        return " ".join(f"word{i}" for i in range(n)) + "."
    return respond


def buttons(sent: Sent) -> list[str]:
    assert sent.reply_markup, "no keyboard"
    return [b["callback_data"] for row in sent.reply_markup["inline_keyboard"] for b in row]


def labels(sent: Sent) -> list[str]:
    assert sent.reply_markup
    return [b["text"] for row in sent.reply_markup["inline_keyboard"] for b in row]


async def test_start_registers_user_and_admin_command_menus(tmp_path: Path,
                                                            fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake):
        assert [c.method for c in fake.calls][:1] == ["getMe"]
        users = [c["command"] for c in fake.commands["default"]]
        admins = [c["command"] for c in fake.commands[f"chat:{ADMIN}"]]
        assert {"start", "help", "new", "sources", "correct", "optout", "optin",
                "forget"} <= set(users)
        assert not {"status", "retrain"} & set(users)
        assert {"status", "retrain", "rollback", "adapters", "ingest", "probe"} <= set(admins)
        assert len(fake.commands) == 2  # no admin menu for anyone else


async def test_dm_answer_streams_with_paced_edits(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    model = FakeChatModel(words_responder(60), delay_s=0.02)  # >= 1.2 s of generation
    async with running(tmp_path, fake, model=model) as env:
        user = fake.user(USER)
        await env.send(fake.text(fake.private(user), user, "tell me something"))
        assert fake.calls_of("sendChatAction")[0].params["action"] == "typing"
        sends = fake.calls_of("sendMessage")
        edits = fake.calls_of("editMessageText")
        assert len(sends) == 1 and len(edits) >= 2  # streamed: at least one edit before the final
        msg = fake.last_message(USER)
        expected = " ".join(f"word{i}" for i in range(60)) + "."
        assert msg.text == expected
        assert all(expected.startswith(t) for t in msg.history)  # every stage was a prefix
        times = [c.at for c in sends + edits]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= INTERVAL - 0.01, gaps
        aid = (await env.db("SELECT id FROM messages WHERE role = 'assistant'"))[0][0]
        assert buttons(msg) == [f"fb:{aid}:1", f"fb:{aid}:-1"]
        rows = await env.db("SELECT role, text, status FROM messages ORDER BY id")
        assert rows == [("user", "tell me something", "done"), ("assistant", expected, "done")]


async def test_group_answers_mention_reply_and_ask_and_ignores_the_rest(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        group, user = fake.group(), fake.user(USER)
        await env.send(fake.text(group, user, "just chatting with friends"))
        await env.send(fake.photo(group, user))
        assert not fake.calls_of("sendMessage")
        assert await env.db("SELECT COUNT(*) FROM messages") == [(0,)]

        mention = fake.text(group, user, f"@{fake.username} what is up")
        await env.send(mention)
        answer = fake.last_message(group["id"])
        assert answer.text == "You said: what is up."
        assert answer.reply_to == mention["message"]["message_id"]

        await env.send(fake.text(group, user, "and now?", reply_to=fake.as_message(answer)))
        assert fake.last_message(group["id"]).text == "You said: and now?."
        await env.send(fake.text(group, user, f"/ask@{fake.username} is it late"))
        assert fake.last_message(group["id"]).text == "You said: is it late."
        await env.send(fake.text(group, user, "/ask"))
        assert fake.last_message(group["id"]).text == "Usage: /ask YOUR QUESTION"
        await env.send(fake.text(group, user, f"@{fake.username}"))
        assert "Please send some text" in fake.last_message(group["id"]).text
        stored = await env.db("SELECT text FROM messages WHERE role = 'user' ORDER BY id")
        assert stored == [("what is up",), ("and now?",), ("is it late",)]


async def test_long_answer_is_split_at_natural_bounds(tmp_path: Path,
                                                      fake: FakeTelegramAPI) -> None:
    para = " ".join(f"Sentence {i} says something useful about owls." for i in range(20))
    text = "\n\n".join(f"{para} Paragraph {p}." for p in range(10))
    assert 9000 <= len(text) <= 10000
    model = FakeChatModel(lambda m: text)
    async with running(tmp_path, fake, model=model, model__max_new_tokens=5000) as env:
        user = fake.user(USER)
        await env.send(fake.text(fake.private(user), user, "write a lot"))
        msgs = fake.chat_messages(USER)
        assert len(msgs) == 3
        assert all(utf16_len(m.text) <= 4096 and m.text.endswith(".") for m in msgs)
        assert " ".join(" ".join(m.text for m in msgs).split()) == " ".join(text.split())
        assert [m.reply_markup is not None for m in msgs] == [False, False, True]
        stored = await env.db("SELECT text FROM messages WHERE role = 'assistant'")
        assert stored == [(text,)]


async def test_html_is_escaped_and_parse_errors_fall_back_to_plain(
        tmp_path: Path, fake: FakeTelegramAPI, caplog: pytest.LogCaptureFixture) -> None:
    raw = "Use <b>tags</b> & x<y, **strong** and `a<b` here"
    async with running(tmp_path, fake, model=FakeChatModel(lambda m: raw)) as env:
        user = fake.user(USER)
        await env.send(fake.text(fake.private(user), user, "format"))
        msg = fake.last_message(USER)
        assert msg.parse_mode == "HTML"
        assert msg.text == "Use <b>tags</b> & x<y, strong and a<b here"
        # a parse error (e.g. an entity Telegram rejects) makes the reply go out as plain text
        fake.fail("sendMessage", 400, when=lambda p: bool(p.get("parse_mode")))
        fake.fail("editMessageText", 400, when=lambda p: bool(p.get("parse_mode")), times=99)
        await env.send(fake.text(fake.private(user), user, "again"))
        msg = fake.last_message(USER)
        assert msg.parse_mode is None and msg.text == raw
        assert buttons(msg)
        assert "resending as plain text" in caplog.text


async def test_feedback_buttons_round_trip_and_stale_data(tmp_path: Path,
                                                          fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        await env.send(fake.text(chat, user, "rate me"))
        msg = fake.last_message(USER)
        up, down = buttons(msg)
        aid = int(up.split(":")[1])
        await env.send(fake.press(msg, user, up))
        assert await env.store.get_feedback(aid) == 1
        assert labels(msg) == ["✅ 👍", "👎"]
        assert "recorded 👍" in fake.calls_of("answerCallbackQuery")[-1].params["text"]
        await env.send(fake.press(msg, user, down))
        assert await env.store.get_feedback(aid) == -1
        assert labels(msg) == ["👍", "✅ 👎"]
        await env.send(fake.press(msg, user, f"fb:{aid + 50}:1"))  # forged: not on the message
        await env.send(fake.press(msg, user, "garbage"))
        assert await env.store.get_feedback(aid) == -1
        assert fake.calls_of("answerCallbackQuery")[-1].params["text"] == (
            "This button is no longer valid.")
        stored_user = await env.store.get_user("telegram", str(USER))
        assert stored_user is not None
        await env.store.forget_user(stored_user.id)
        await env.send(fake.press(msg, user, up))  # old button: the answer is gone
        assert "no longer exists" in fake.calls_of("answerCallbackQuery")[-1].params["text"]


async def test_only_the_asker_rates_in_groups(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        group, asker, other = fake.group(), fake.user(USER), fake.user(OTHER, "Bob")
        await env.send(fake.text(group, asker, f"@{fake.username} hello"))
        msg = fake.last_message(group["id"])
        await env.send(fake.press(msg, other, buttons(msg)[0]))
        note = fake.calls_of("answerCallbackQuery")[-1].params["text"]
        assert "Only the person who asked" in note
        assert await env.store.get_feedback(int(buttons(msg)[0].split(":")[1])) is None


async def test_every_user_command(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)

        async def say(text: str, **kw: Any) -> str:
            await env.send(fake.text(chat, user, text, **kw))
            return fake.last_message(USER).text

        assert "/sources" in await say("/start") and "/forget" in await say("/help")
        assert "no answer yet" in await say("/sources")
        await say("when does NightOwl retrain using LoRA adapters")
        answer = fake.last_message(USER)
        assert "guide.md" in answer.text  # citation footer
        assert "guide.md › Retraining" in await say("/sources")
        assert (await say("/correct")).startswith("Usage: /correct")
        assert "Thanks" in await say("/correct At 3 am.", reply_to=fake.as_message(answer))
        assert await env.db("SELECT text FROM corrections") == [("At 3 am.",)]
        assert "will not be used" in await say("/optout")
        assert await env.db("SELECT opted_out FROM users") == [(1,)]
        assert "may be used" in await say("/optin")
        assert await env.db("SELECT opted_out FROM users") == [(0,)]
        assert "Started a new conversation" in await say("/new")
        await say("fresh start")
        sent = env.model.calls[-1]["messages"]
        assert not any("retrain" in m["content"] for m in sent if m["role"] != "system")
        assert "Unknown command /nope" in await say("/nope")

        assert "Are you sure" in await say("/forget")
        confirm = fake.last_message(USER)
        yes, no = buttons(confirm)
        await env.send(fake.press(confirm, fake.user(OTHER, "Bob"), yes))  # someone else
        assert await env.store.get_user("telegram", str(USER)) is not None
        await env.send(fake.press(confirm, user, no))
        assert confirm.text.startswith("Cancelled")
        await say("/forget")
        confirm = fake.last_message(USER)
        await env.send(fake.press(confirm, user, buttons(confirm)[0]))
        assert confirm.text.startswith("Deleted 4 messages") and confirm.reply_markup is None
        assert await env.store.get_user("telegram", str(USER)) is None


async def test_admin_commands_for_admins_and_refusals_for_others(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        admin, user = fake.user(ADMIN, "Ada"), fake.user(USER)
        achat, uchat = fake.private(admin), fake.private(user)
        commands = ["/status", "/retrain", "/rollback", "/adapters", "/ingest", "/probe list"]
        for cmd in commands:
            await env.send(fake.text(uchat, user, cmd))
            assert "for admins only" in fake.last_message(USER).text
        audit = await env.db("SELECT actor, action, allowed FROM audit ORDER BY id")
        assert audit == [(str(USER), c.split()[0][1:], 0) for c in commands]

        async def run(text: str) -> str:
            await env.send(fake.text(achat, admin, text))
            return fake.last_message(ADMIN).text

        assert "Model: fake" in await run("/status")
        assert "Started a learning cycle" in await run("/retrain")
        await env.core.wait_background()
        assert env.learning.retrains == 1
        dms = [m.text for m in fake.chat_messages(ADMIN)]
        assert any("promoted v0001" in t for t in dms)  # the admin notifier's DM
        assert (await run("/ingest")).startswith("Usage:")
        allowed = await env.db("SELECT COUNT(*) FROM audit WHERE allowed = 1")
        assert allowed == [(3,)]

        plot = tmp_path / "plot.png"
        plot.write_bytes(b"\x89PNG fake")
        await env.core.notify_admins("Training run: loss plot", [plot])
        photo = fake.calls_of("sendPhoto")[-1]
        assert photo.params["chat_id"] == ADMIN
        assert photo.params["photo"]["bytes"] == plot.read_bytes()


def register_adapter(reg: Registry) -> str:
    """A registered adapter the real registry accepts (a LoRA tensor, not a trained one)."""
    return reg.register(write_adapter_files(reg.staging_dir()),
                        {"status": "promoted", "examples": 3})


async def test_admin_learning_commands_speak_with_the_real_service(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake, real_learning=True) as env:
        admin = fake.user(ADMIN, "Ada")
        chat = fake.private(admin)

        async def run(text: str) -> str:
            await env.send(fake.text(chat, admin, text))
            return fake.last_message(ADMIN).text

        assert await run("/adapters") == "No adapters trained yet."
        assert (await run("/rollback")).startswith("Rollback refused: the base model is "
                                                   "already active")
        reg = Registry(env.core.cfg.storage.path)
        v1, v2 = register_adapter(reg), register_adapter(reg)
        reg.set_active(v2)
        listed = await run("/adapters")
        assert f"* {v2}" in listed and f"Active: {v2}" in listed
        assert await run("/rollback") == f"Active adapter is now {v1} (was {v2})."
        assert reg.active() == v1 and env.model.active_adapter == v1
        refused = await run("/rollback v9")
        assert refused.startswith("Rollback refused: 'v9' is not an adapter version")
        assert refused.endswith(f"Kept {v1}.") and reg.active() == v1
        assert await run("/probe add 2+2 => 4") == "Added probe #1: 2+2 => 4"
        assert await run("/probe list") == "#1 2+2 => 4"
        audit = await env.db("SELECT action, allowed FROM audit ORDER BY id")
        assert audit == [(a, 1) for a in ("adapters", "rollback", "adapters", "rollback",
                                          "rollback", "probe", "probe")]


async def test_ingest_documents_through_get_file(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake, real_kb=True) as env:
        admin, user = fake.user(ADMIN, "Ada"), fake.user(USER)
        achat, uchat = fake.private(admin), fake.private(user)
        await env.send(fake.document(achat, admin, "notes.md", b"# Owls\nThey fly at night.",
                                     caption="/ingest"))
        assert fake.last_message(ADMIN).text == "added: notes.md (1 chunks)"
        (source,) = await env.kb.sources()
        assert source.source.endswith("notes.md") and source.ingested_by == f"telegram:{ADMIN}"
        assert [p.source for p in await env.kb.search("owls fly at night")] == ["notes.md"]
        assert len(fake.calls_of("getFile")) == 1

        doc = fake.document(achat, admin, "tool.exe", b"MZ\x00")
        await env.send(doc)
        assert fake.last_message(ADMIN).text == DOC_HINT  # no caption: explained, not ingested
        await env.send(fake.text(achat, admin, "/ingest", reply_to=doc["message"]))
        assert fake.last_message(ADMIN).text.startswith(
            "skipped: tool.exe (unsupported file type .exe; supported: ")

        big = fake.document(achat, admin, "huge.txt", b"x", size=25 * 1024 * 1024,
                            caption="/ingest")
        await env.send(big)
        assert fake.last_message(ADMIN).text.startswith("skipped: huge.txt (too large")
        assert "20 MB" in fake.last_message(ADMIN).text
        assert len(fake.calls_of("getFile")) == 2  # never downloaded
        refusal = (await env.store.audit_log(1))[0]  # refused inside the audited command
        assert (refusal.actor, refusal.action, refusal.allowed) == \
            (str(ADMIN), "ingest", 1)
        assert refusal.result.startswith("skipped: huge.txt (too large")

        await env.send(fake.document(uchat, user, "mine.md", b"hi", caption="/ingest"))
        assert "for admins only" in fake.last_message(USER).text
        assert len(fake.calls_of("getFile")) == 2 and len(await env.kb.sources()) == 1


async def test_media_without_text_gets_a_polite_reply(tmp_path: Path,
                                                      fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        for update in (fake.sticker(chat, user), fake.photo(chat, user), fake.voice(chat, user)):
            await env.send(update)
            assert fake.last_message(USER).text == MEDIA_REPLY
        await env.send(fake.message(chat, user, None, caption="what is this",
                                    photo=[{"file_id": "p", "file_unique_id": "up",
                                            "width": 1, "height": 1}]))
        assert fake.last_message(USER).text == "You said: what is this."
        await env.send(fake.document(chat, user, "a.md", b"x"))
        assert fake.last_message(USER).text == DOC_HINT


async def test_flood_control_is_waited_out(tmp_path: Path, fake: FakeTelegramAPI,
                                           caplog: pytest.LogCaptureFixture) -> None:
    model = FakeChatModel(words_responder(30), delay_s=0.02)
    async with running(tmp_path, fake, model=model) as env:
        user = fake.user(USER)
        fake.fail("sendMessage", 429, retry_after=1)
        fake.fail("editMessageText", 429, retry_after=1)
        await env.send(fake.text(fake.private(user), user, "go"))
        failed = [c for c in fake.calls if c.status == 429]
        assert [c.method for c in failed] == ["sendMessage", "editMessageText"]
        msg = fake.last_message(USER)
        assert msg.text == " ".join(f"word{i}" for i in range(30)) + "." and buttons(msg)
        assert len(fake.chat_messages(USER)) == 1


async def test_blocked_user_is_not_retried_and_5xx_is(tmp_path: Path, fake: FakeTelegramAPI,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        fake.fail("sendMessage", 403)
        await env.send(fake.text(chat, user, "hello"))
        assert [c.status for c in fake.calls_of("sendMessage", ok_only=False)] == [403]
        assert not fake.calls_of("editMessageText", ok_only=False)
        assert "blocked the bot" in caplog.text
        await env.core.notify_admins("x", [])  # other chats are unaffected
        assert fake.last_message(ADMIN).text == "x"
        fake.fail("sendMessage", 502)
        await env.send(fake.text(chat, user, "I unblocked you"))  # writing again = unblocked
        assert fake.last_message(USER).text == "You said: I unblocked you."
        assert [c.status for c in fake.calls_of("sendMessage", ok_only=False)][-2:] == [502, 200]


async def test_handler_errors_are_logged_and_explained(tmp_path: Path, fake: FakeTelegramAPI,
                                                       caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)

        async def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(env.core, "command", broken)
        await env.send(fake.text(chat, user, "/status"))
        assert fake.last_message(USER).text == ERROR_REPLY
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert f"user {pseudonym('telegram', USER)}" in errors[0].getMessage()  # not the raw id
        caplog.clear()
        await env.send(fake.text(chat, user, "still there?"))
        assert fake.last_message(USER).text == "You said: still there?."


async def test_allowed_users_and_chats(tmp_path: Path, fake: FakeTelegramAPI,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nightowl")
    group = fake.group(-100_777)
    async with running(tmp_path, fake, telegram__allowed_users=[USER],
                       telegram__allowed_chats=[group["id"]]) as env:
        user, other = fake.user(USER), fake.user(OTHER, "Bob")
        await env.send(fake.text(fake.private(other), other, "hi"))
        assert "this bot is private" in fake.last_message(OTHER).text
        await env.send(fake.text(fake.private(user), user, "hi"))
        assert fake.last_message(USER).text == "You said: hi."
        await env.send(fake.text(group, other, f"@{fake.username} hi from the team"))
        assert fake.last_message(group["id"]).text == "You said: hi from the team."
        elsewhere = fake.group(-100_888)
        await env.send(fake.text(elsewhere, other, f"@{fake.username} hi"))
        assert not fake.chat_messages(elsewhere["id"])
    refusals = [r.getMessage() for r in caplog.records if "refused user" in r.getMessage()]
    assert refusals, "the refusals are logged"
    for line in refusals:  # logged under a pseudonym, never the raw Telegram id (L11)
        assert str(OTHER) not in line and pseudonym("telegram", OTHER) in line, line


async def test_conversation_continues_after_restart(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    user = fake.user(USER)
    chat = fake.private(user)
    async with running(tmp_path, fake) as env:
        await env.send(fake.text(chat, user, "my name is Zed"))
        # a message stored but never answered (the process died mid-answer)
        u = await env.store.ensure_user("telegram", str(USER), "Ann")
        conv = await env.store.active_conversation(u.id, "telegram", str(USER))
        await env.store.add_message(conv, "user", "are you there", status="pending")
    async with running(tmp_path, fake) as env:
        assert await env.tg.recovered() == 1
        assert fake.last_message(USER).text == "You said: are you there."
        await env.send(fake.text(chat, user, "what is my name"))
        history = [m["content"] for m in env.model.calls[-1]["messages"]]
        assert "my name is Zed" in history and "You said: my name is Zed." in history


async def test_real_polling_acknowledges_only_stored_updates(tmp_path: Path,
                                                             fake: FakeTelegramAPI) -> None:
    """Several users' messages (and a command) in one batch, the first answer slow: every
    offset the bot confirms is checked against the store when Telegram receives it."""
    ann, bob, cid = fake.user(USER), fake.user(OTHER, "Bob"), fake.user(3333, "Cid")
    chats = {u["id"]: fake.private(u) for u in (ann, bob, cid)}
    sent = [(ann, "polled hello"), (bob, "bob here"), (ann, "ann again"), (cid, "/help"),
            (cid, "cid asks"), (bob, "bob again")]
    updates = [fake.text(chats[u["id"]], u, text) for u, text in sent]
    messages = {u["update_id"]: u["message"]["text"] for u in updates
                if not u["message"]["text"].startswith("/")}
    problems: list[str] = []
    env_box: list[Env] = []

    async def on_ack(offset: int) -> None:
        if not env_box:
            return
        stored = {r[0] for r in await env_box[0].db("SELECT text FROM messages")}
        problems.extend(f"{t!r} confirmed unstored" for i, t in messages.items()
                        if i < offset and t not in stored)

    def answered() -> bool:
        done = [m for m in fake.messages.values() if m.reply_markup and m.chat_id > 0]
        return len(done) >= len(messages) and any(m.text.startswith("NightOwl answers") for m
                                                  in fake.chat_messages(cid["id"]))

    fake.on_get_updates = on_ack
    async with running(tmp_path, fake, polling=True,
                       model=FakeChatModel(delay_s=0.05)) as env:
        env_box.append(env)
        for update in updates:
            fake.push(update)
        await fake.wait_until(answered)
        assert fake.last_message(USER).text == "You said: ann again."
    assert not problems, problems
    assert fake.calls_of("deleteWebhook")
    assert any(c.returned == [u["update_id"] for u in updates]
               for c in fake.calls_of("getUpdates"))  # one batch
    last = fake.calls_of("getUpdates")[-1]
    assert last.params["offset"] == updates[-1]["update_id"] + 1 and last.params["timeout"] == 0


class FailingModel(FakeChatModel):
    """Streams its whole answer, then fails (a crash in the middle of generation)."""

    async def stream(self, messages: Sequence[ChatMessage], params: Any = None, *,
                     adapter: str = "active", info: Any = None) -> AsyncIterator[str]:
        async for delta in super().stream(messages, params, adapter=adapter, info=info):
            yield delta
        raise RuntimeError("the model crashed")


async def test_failure_after_long_stream_leaves_only_the_apology(
        tmp_path: Path, fake: FakeTelegramAPI, caplog: pytest.LogCaptureFixture) -> None:
    model = FailingModel(words_responder(1000), delay_s=0.001)
    async with running(tmp_path, fake, model=model, model__max_new_tokens=5000) as env:
        user = fake.user(USER)
        await env.send(fake.text(fake.private(user), user, "long please"))
        assert fake.calls_of("deleteMessage")  # the second streamed part was removed
        msgs = fake.chat_messages(USER)
        assert [m.text for m in msgs] == ["Sorry, something went wrong while answering. "
                                          "Please try again."]
        assert "the model crashed" in caplog.text
        caplog.clear()  # the core logs that failure as an ERROR on purpose


async def test_correct_by_replying_to_an_older_answer(tmp_path: Path,
                                                      fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        await env.send(fake.text(chat, user, "first question"))
        first = fake.last_message(USER)
        await env.send(fake.text(chat, user, "second question"))
        await env.send(fake.text(chat, user, "/correct The real first answer.",
                                 reply_to=fake.as_message(first)))
        rows = await env.db(
            "SELECT m.text, k.text FROM corrections k JOIN messages m ON m.id = k.message_id")
        assert rows == [("You said: first question.", "The real first answer.")]


async def test_forbidden_is_recorded_in_the_store(tmp_path: Path, fake: FakeTelegramAPI,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, fake) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        recorded: asyncio.Queue[bool] = asyncio.Queue()
        real = env.core.mark_blocked

        async def mark_blocked(platform: str, user_id: str, blocked: bool = True) -> None:
            await real(platform, user_id, blocked)
            recorded.put_nowait(blocked)

        env.core.mark_blocked = mark_blocked  # type: ignore[method-assign]
        fake.fail("sendMessage", 403)
        await env.send(fake.text(chat, user, "hello"))
        assert await asyncio.wait_for(recorded.get(), 30) is True  # stored, not just sent
        assert await env.db("SELECT blocked_bot FROM users") == [(1,)]
        await env.send(fake.text(chat, user, "back again"))
        assert await asyncio.wait_for(recorded.get(), 30) is False
        assert await env.db("SELECT blocked_bot FROM users") == [(0,)]


async def test_server_errors_mid_stream_still_deliver_one_complete_answer(
        tmp_path: Path, fake: FakeTelegramAPI, caplog: pytest.LogCaptureFixture) -> None:
    model = FakeChatModel(words_responder(80), delay_s=0.02)
    async with running(tmp_path, fake, model=model) as env:
        user = fake.user(USER)
        fake.fail("editMessageText", 502, times=3)
        fake.fail("editMessageText", 429, retry_after=1)
        await env.send(fake.text(fake.private(user), user, "stream through the storm"))
        statuses = [c.status for c in fake.calls_of("editMessageText", ok_only=False)]
        assert 502 in statuses and 429 in statuses and statuses[-1] == 200
        msgs = fake.chat_messages(USER)
        assert len(msgs) == 1  # delivered once, not duplicated by retries
        assert msgs[0].text == " ".join(f"word{i}" for i in range(80)) + "." and buttons(msgs[0])
        rows = await env.db("SELECT role, status FROM messages ORDER BY id")
        assert rows == [("user", "done"), ("assistant", "done")]


async def test_storing_the_answer_fails_after_streaming(tmp_path: Path, fake: FakeTelegramAPI,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The answer was streamed, then the store fails: the renderer still finishes (complete
    text, no 👍/👎 for an answer that does not exist), nothing is left running, and the question
    is not answered a second time after a restart."""
    model = FakeChatModel(words_responder(40), delay_s=0.01)
    user = fake.user(USER)
    chat = fake.private(user)
    async with running(tmp_path, fake, model=model) as env:
        async def broken(*args: Any, **kw: Any) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(env.store, "answer", broken)
        before = asyncio.all_tasks()
        await env.send(fake.text(chat, user, "stream then fail"))
        msgs = fake.chat_messages(USER)
        assert [m.text for m in msgs] == [" ".join(f"word{i}" for i in range(40)) + "."]
        assert msgs[0].reply_markup is None
        leftover = [t for t in asyncio.all_tasks() - before if not t.done()
                    and "flush" in repr(t.get_coro()) + repr(t.get_name())]
        assert not leftover, leftover
        assert await env.db("SELECT role, status FROM messages") == [("user", "failed")]
        assert "disk full" in caplog.text
        caplog.clear()  # logged as an ERROR on purpose
    async with running(tmp_path, fake, model=model) as env:
        assert await env.tg.recovered() == 0
        assert len(fake.chat_messages(USER)) == 1


async def test_admin_output_goes_to_the_admins_private_chat(tmp_path: Path,
                                                            fake: FakeTelegramAPI) -> None:
    """/status, /adapters, /probe list in a group: the result is the admin's alone (DM); the
    group sees a note. Without a private chat the admin is told how to open one."""
    group = fake.group()
    admin, user = fake.user(ADMIN, "Ada"), fake.user(USER)
    async with running(tmp_path, fake) as env:
        await env.send(fake.text(fake.private(admin), admin,
                                 "/probe add What is the secret plan? => The owls fly at dawn."))
        for cmd in ("/status", "/adapters", "/probe list"):
            await env.send(fake.text(group, admin, cmd))
            note = fake.last_message(group["id"])
            assert note.text == f"📬 Sent you the result of /{cmd.split()[0][1:]} in our " \
                                "private chat."
        dm = [m.text for m in fake.chat_messages(ADMIN)]
        assert any("Model: fake" in t for t in dm) and any("owls fly at dawn" in t for t in dm)
        shown = " ".join(m.text for m in fake.chat_messages(group["id"]))
        assert "Model: fake" not in shown and "owls fly at dawn" not in shown
        await env.send(fake.text(group, user, "/status"))  # refusals stay where they were asked
        assert "for admins only" in fake.last_message(group["id"]).text
        await env.send(fake.text(group, user, "/help"))  # user commands answer in the group
        assert fake.last_message(group["id"]).text.startswith("NightOwl answers")
        fake.fail("sendMessage", 403, when=lambda p: int(p["chat_id"]) == ADMIN)
        await env.send(fake.text(group, admin, "/status"))
        note = fake.last_message(group["id"]).text
        assert "cannot message you yet" in note and f"@{fake.username}" in note
        assert "Model: fake" not in note


async def test_a_refusal_is_confirmed_without_a_turn_of_the_pacer(tmp_path: Path,
                                                                  fake: FakeTelegramAPI) -> None:
    """A rate-limited message needs nothing stored: its update is confirmed while the refusal
    still waits for the chat's pacer (busy with an answer there)."""
    async with running(tmp_path, fake, limits__user_messages_per_minute=1.0,
                       limits__user_burst=1) as env:
        user = fake.user(USER)
        chat = fake.private(user)
        await env.send(fake.text(chat, user, "first"))  # takes the only token
        update = Update.de_json(fake.text(chat, user, "second"), env.tg.app.bot)
        ledger = env.tg.ledger
        assert ledger.receive([update]) == [update]  # as if polled
        async with env.tg.sender.pacer(USER):  # the chat's pacer is taken
            handling = asyncio.create_task(env.tg.app.process_update(update))
            while ledger.offset <= update.update_id:
                ledger.changed.clear()
                await asyncio.wait_for(ledger.changed.wait(), 5)
            assert fake.last_message(USER).text == "You said: first."  # not sent yet
        await handling
        assert "please wait" in fake.last_message(USER).text


async def test_polling_survives_get_updates_errors(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    user = fake.user(USER)
    fake.fail("getUpdates", 502, times=2)
    async with running(tmp_path, fake, polling=True) as env:
        fake.push(fake.text(fake.private(user), user, "still polling?"))
        await fake.wait_until(lambda: bool(fake.chat_messages(USER))
                              and bool(fake.last_message(USER).reply_markup))
        assert fake.last_message(USER).text == "You said: still polling?."
        assert [c.status for c in fake.calls_of("getUpdates", ok_only=False)][:2] == [502, 502]
        assert env.tg.ledger.offset == 2
