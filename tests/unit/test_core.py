"""The conversation core with fakes: storing, history, retrieval, commands, admin checks."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from bot.config import Config
from bot.core import EMPTY_REPLY, CollectingRenderer, Core, Incoming
from data.store import Store
from llm.base import ChatMessage
from llm.fake import FakeChatModel
from rag.base import Passage
from rag.fake import FakeRetriever
from tests.fakes.learning import FakeLearning

GUIDE = Passage("To retrain the bot run nightowl train or send /retrain as an admin.",
                "guide.md", "Retraining", 0.9, "guide.md#0")


def msg(text: str, user: str = "u1", admin: bool = False, reply_to: str | None = None,
        chat: str = "c1") -> Incoming:
    return Incoming("terminal", chat, user, "Tester", text, is_admin=admin,
                    reply_to_message_id=reply_to)


@pytest.fixture
def model() -> FakeChatModel:
    return FakeChatModel()


@pytest.fixture
def core(cfg: Config, store: Store, model: FakeChatModel) -> Core:
    return Core(cfg, store, model, FakeRetriever([GUIDE]), FakeLearning())


async def test_answer_is_grounded_streamed_and_stored(core: Core, store: Store,
                                                      model: FakeChatModel) -> None:
    r = CollectingRenderer()
    reply = await core.handle(msg("How do I retrain the bot?"), r)
    assert r.started and len(r.updates) > 2 and r.updates[-1] == reply.answer
    assert "Sources:\n[1] guide.md › Retraining" in reply.text
    system = model.calls[0]["messages"][0]["content"]
    assert "nightowl train" in system and "[1] guide.md › Retraining" in system
    conv = (await store.training_conversations())[0]
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[1].sources[0]["source"] == "guide.md"
    stored = await store.get_message(reply.answer_id or 0)
    assert stored is not None and stored.model == "fake" and stored.latency_s is not None


async def test_history_is_used_and_trimmed_with_notice(cfg: Config, store: Store) -> None:
    model = FakeChatModel(context_length=cfg.model.max_new_tokens + 60)
    core = Core(cfg.replace(limits__user_messages_per_minute=0.0), store, model, None)
    for i in range(6):
        await core.handle(msg(f"message number {i} " + "word " * 5), CollectingRenderer())
    reply = await core.handle(msg("last"), CollectingRenderer())
    assert any("used only the last" in n for n in reply.notices)
    sent = model.calls[-1]["messages"]
    assert sent[-1]["content"] == "last" and sent[1]["role"] == "user"
    assert len(sent) < 2 + 12


async def test_empty_message_is_not_stored(core: Core, store: Store) -> None:
    r = CollectingRenderer()
    reply = await core.handle(msg("   \n "), r)
    assert reply.text == EMPTY_REPLY and r.reply is reply
    assert (await store.stats()).messages == 0


async def test_huge_message_truncated_with_notice(core: Core, cfg: Config,
                                                  model: FakeChatModel) -> None:
    reply = await core.handle(msg("x" * 100_000), CollectingRenderer())
    assert any("100,000 characters" in n for n in reply.notices)
    assert len(model.calls[0]["messages"][-1]["content"]) <= cfg.chat.max_message_chars


async def test_model_failure_marks_turn_failed_and_keeps_running(core: Core, store: Store,
                                                                 model: FakeChatModel) -> None:
    model.fail_next = RuntimeError("boom")
    reply = await core.handle(msg("hello"), CollectingRenderer())
    assert "something went wrong" in reply.text and reply.answer_id is None
    rows = list(await store.db.execute_fetchall("SELECT status FROM messages"))
    assert rows == [("failed",)]
    ok = await core.handle(msg("again"), CollectingRenderer())
    assert ok.answer_id is not None


async def test_user_turn_committed_before_generation(cfg: Config, store: Store) -> None:
    seen: list[tuple[str, str]] = []

    class CheckingModel(FakeChatModel):
        """Looks at the database at the moment generation starts."""

        async def stream(self, messages: Sequence[ChatMessage], params: Any = None, *,
                         adapter: str = "active", info: Any = None) -> AsyncIterator[str]:
            # a second connection sees only what is committed
            with sqlite3.connect(store.path) as other:
                seen.extend(other.execute("SELECT text, status FROM messages").fetchall())
            async for delta in super().stream(messages, params, adapter=adapter, info=info):
                yield delta

    core = Core(cfg, store, CheckingModel(), None)
    await core.handle(msg("q"), CollectingRenderer())
    assert seen == [("q", "pending")]


async def test_commands_feedback_correct_sources_new(core: Core, store: Store) -> None:
    reply = await core.handle(msg("How do I retrain the bot?"), CollectingRenderer())
    assert (await core.command(msg("/good"), "good")).ok
    assert await store.get_feedback(reply.answer_id or 0) == 1
    await core.command(msg("/bad"), "bad")
    assert await store.get_feedback(reply.answer_id or 0) == -1
    usage = await core.command(msg("/correct"), "correct", "")
    assert not usage.ok and "Usage" in usage.text
    await core.command(msg("/correct"), "correct", "Run nightowl train.")
    convs = await store.training_conversations()
    assert convs[0].messages[1].correction == "Run nightowl train."
    src = await core.command(msg("/sources"), "sources")
    assert "guide.md › Retraining" in src.text and "nightowl train" in src.text
    await core.command(msg("/new"), "new")
    assert "no answer yet" in (await core.command(msg("/sources"), "sources")).text
    other = await core.feedback(msg("x"), 99999, 1)
    assert not other.ok


async def test_optout_and_forget(core: Core, store: Store) -> None:
    await core.handle(msg("hi"), CollectingRenderer())
    await core.command(msg("/optout"), "optout")
    assert await store.training_conversations() == []
    await core.command(msg("/optin"), "optin")
    assert len(await store.training_conversations()) == 1
    ask = await core.command(msg("/forget"), "forget")
    assert ask.confirm == "forget"
    assert (await store.stats()).messages == 2  # nothing deleted before confirmation
    done = await core.forget(msg("/forget"))
    assert "Deleted 2 messages" in done.text
    assert isinstance(core.learning, FakeLearning) and "hi" in core.learning.purged
    assert (await store.stats()).messages == 0 and await store.get_user("terminal", "u1") is None


async def test_admin_commands_checked_and_audited(core: Core, store: Store) -> None:
    refused = await core.command(msg("/retrain", user="eve"), "retrain")
    assert not refused.ok and "admins only" in refused.text
    await core.wait_background()  # a retrain started despite the refusal would finish here
    assert isinstance(core.learning, FakeLearning) and core.learning.retrains == 0
    notes: list[str] = []

    async def notify(text: str, files: object) -> None:
        notes.append(text)

    core.add_admin_notifier(notify)
    started = await core.command(msg("/retrain", user="root", admin=True), "retrain")
    assert started.ok
    await core.wait_background()
    assert notes and "promoted v0001" in notes[0]
    listed = await core.command(msg("/a", user="root", admin=True), "adapters")
    assert "v0001 (active)" in listed.text
    status = await core.command(msg("/status", admin=True), "status")
    assert "Model: fake" in status.text
    log = await store.audit_log()
    assert {(e.actor, e.action, e.allowed) for e in log} >= {
        ("eve", "retrain", 0), ("root", "retrain", 1), ("root", "adapters", 1)}


async def test_unknown_command(core: Core) -> None:
    res = await core.command(msg("/frobnicate"), "frobnicate")
    assert not res.ok and "/help" in res.text


async def test_rate_limit_is_polite_and_not_stored(cfg: Config, store: Store) -> None:
    core = Core(cfg.replace(limits__user_burst=2, limits__user_messages_per_minute=1.0), store,
                FakeChatModel(), None)
    replies = [await core.handle(msg(f"q{i}"), CollectingRenderer()) for i in range(3)]
    assert replies[0].answer_id and replies[1].answer_id
    assert replies[2].answer_id is None and "please wait" in replies[2].text
    assert (await store.stats()).messages == 4
    other = await core.handle(msg("hi", user="u2"), CollectingRenderer())
    assert other.answer_id is not None  # limits are per user


async def test_moderation_refuses_before_answering(cfg: Config, store: Store) -> None:
    model = FakeChatModel()
    core = Core(cfg.replace(moderation__blocked_words=["forbidden topic"]), store, model, None)
    reply = await core.handle(msg("tell me about the FORBIDDEN\u200b topic"), CollectingRenderer())
    assert "can't help" in reply.text and model.calls == []
    assert (await store.stats()).messages == 0


async def test_recover_pending_answers_young_and_apologises_for_old(cfg: Config,
                                                                    store: Store) -> None:
    model = FakeChatModel()
    core = Core(cfg, store, model, None)
    user = await store.ensure_user("telegram", "7", "Al")
    conv = await store.active_conversation(user.id, "telegram", "c9")
    young = await store.add_message(conv, "user", "still there?", status="pending")
    old = await store.add_message(conv, "user", "ancient", status="pending")
    await store.db.execute("UPDATE messages SET created_at = created_at - 99999 WHERE id = ?",
                           (old,))
    other_platform_user = await store.ensure_user("discord", "8")
    oc = await store.active_conversation(other_platform_user.id, "discord", "d")
    await store.add_message(oc, "user", "discord one", status="pending")
    renderers: list[tuple[str, str, CollectingRenderer]] = []

    def renderer_for(chat_id: str, user_id: str) -> CollectingRenderer:
        r = CollectingRenderer()
        renderers.append((chat_id, user_id, r))
        return r

    assert await core.recover_pending("telegram", renderer_for) == 2
    texts = {r.reply.text if r.reply else "" for _, _, r in renderers}
    assert any("still there?" in t for t in texts) and any("restarted" in t for t in texts)
    assert all(c == "c9" and u == "7" for c, u, _ in renderers)
    statuses = dict(await store.db.execute_fetchall("SELECT id, status FROM messages"))
    assert statuses[young] == "done" and statuses[old] == "failed"
    assert await core.recover_pending("telegram", renderer_for) == 0  # nothing answered twice
    assert len(await store.pending_messages()) == 1  # discord's waits for discord


async def test_redelivered_message_is_not_stored_or_answered_twice(core: Core, store: Store,
                                                                   model: FakeChatModel) -> None:
    inc = Incoming("telegram", "c1", "u1", "T", "hello", message_id="77")
    first = await core.handle(inc, CollectingRenderer())
    r = CollectingRenderer()
    again = await core.handle(inc, r)
    assert first.answer_id and again.answer_id is None and not r.started
    assert len(model.calls) == 1 and (await store.stats()).messages == 2


async def test_metrics_count_answers_and_refusals(cfg: Config, store: Store) -> None:
    from prometheus_client import generate_latest

    core = Core(cfg.replace(limits__user_burst=1, limits__user_messages_per_minute=1.0), store,
                FakeChatModel(), None)
    await core.handle(msg("one"), CollectingRenderer())
    await core.handle(msg("two"), CollectingRenderer())
    text = generate_latest(core.metrics.registry).decode()
    assert 'nightowl_requests_total{outcome="ok",platform="terminal"} 1.0' in text
    assert 'nightowl_requests_total{outcome="rate_limited",platform="terminal"} 1.0' in text
    assert "nightowl_answer_latency_seconds_count" in text


async def test_answer_log_line_has_chat_user_hash_latency_adapter(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="nightowl.core")
    await core.handle(msg("hello there", user="secret-user-42"), CollectingRenderer())
    rec = next(r for r in caplog.records if r.getMessage() == "answered")
    assert rec.__dict__["chat"] == "c1" and len(rec.__dict__["user"]) == 12
    assert "secret-user-42" not in str(rec.__dict__)
    assert rec.__dict__["latency_s"] >= 0 and "adapter" in rec.__dict__


async def test_a_failed_admin_action_is_audited(cfg: Config, store: Store) -> None:
    """An admin action that fails with an error that is not a NightOwlError (here OSError from
    writing ACTIVE, as on a full disk) still leaves an audit row, marked failed."""
    from training.service import LearningService

    model = FakeChatModel()
    core = Core(cfg, store, model, None, LearningService(cfg, store, model))
    (cfg.storage.path / "adapters" / "ACTIVE").mkdir(parents=True)  # ACTIVE cannot be written
    with pytest.raises(OSError):
        await core.command(msg("/rollback base", user="root", admin=True), "rollback", "base")
    log = await store.audit_log()
    assert [(e.actor, e.action, e.args, e.allowed) for e in log] == [
        ("root", "rollback", "base", 1)]
    assert log[0].result.startswith("failed: IsADirectoryError")

