"""Per-chat state stays bounded, and the moderation classifier never runs on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from bot.config import Config
from bot.core import CollectingRenderer, Core, Incoming, conversation
from bot.core.bounded import KeyedLocks, LruDict
from bot.core.moderation import ClassifierGuard, Guards, KeywordGuard
from bot.discord import messages as discord_messages
from bot.discord.config import DiscordConfig
from bot.telegram import sender as telegram_sender
from data.store import Store
from llm.fake import FakeChatModel


def test_lru_dict_drops_the_least_recently_used_evictable_entry() -> None:
    d: LruDict[str, int] = LruDict(3, evictable=lambda v: v >= 0)
    for key, value in (("a", 1), ("b", -1), ("c", 3)):
        d.put(key, value)
    assert d.get("a") == 1  # used: now the most recent
    d.put("d", 4)  # over the limit: "b" is in use (negative), so "c" goes
    assert "c" not in d and {"a", "b", "d"} == {k for k in "abcd" if k in d}
    for i in range(10):
        d.get_or_create(f"n{i}", lambda: 0)
    assert len(d) == 3 and "b" in d  # never dropped while it may not go
    for i in range(5):  # entries in use: the one just put is never the one dropped
        d.put(f"busy{i}", -1)
        assert d.get(f"busy{i}") == -1
    assert len(d) == 6 and "b" in d  # over the limit only while more than 3 are in use
    full: LruDict[str, int] = LruDict(1, evictable=lambda v: v >= 0)
    full.put("held", -1)
    assert full.get_or_create("new", lambda: 0) == 0 and "new" in full  # kept for its caller


async def test_keyed_locks_are_bounded_and_never_drop_a_lock_in_use() -> None:
    locks: KeyedLocks[int] = KeyedLocks(limit=2)
    order: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with locks.hold(0):
            order.append("first in")
            entered.set()
            await gate.wait()
            order.append("first out")

    async def waiter() -> None:
        async with locks.hold(0):
            order.append("second in")

    first = asyncio.create_task(holder())
    await entered.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # one turn of the loop: the waiter now waits for key 0's lock
    for key in range(1, 50):  # many other keys come and go while key 0 is held and awaited
        async with locks.hold(key):
            pass
    assert len(locks) <= 3  # the limit, plus the one in use
    gate.set()
    await asyncio.gather(first, second)
    assert order == ["first in", "first out", "second in"]  # still one lock for key 0
    assert len(locks) <= 2


async def test_a_new_key_gets_one_lock_even_when_every_other_is_in_use() -> None:
    locks: KeyedLocks[int] = KeyedLocks(limit=1)
    inside: list[int] = []
    release = asyncio.Event()

    async def hold(key: int) -> None:
        async with locks.hold(key):
            inside.append(key)
            assert inside.count(key) == 1, "two tasks hold the lock of one key"
            await release.wait()
            inside.remove(key)

    tasks = [asyncio.create_task(hold(key)) for key in (0, 1, 1)]
    await asyncio.sleep(0)  # one turn: each task has taken its lock or waits for it
    assert sorted(inside) == [0, 1]
    release.set()
    await asyncio.gather(*tasks)


async def test_core_locks_stay_bounded(cfg: Config, store: Store,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversation, "MAX_CHATS", 5)
    core = Core(cfg.replace(limits__user_messages_per_minute=0.0), store, FakeChatModel(), None)
    for user in range(20):
        await core.handle(Incoming("terminal", "c", f"u{user}", "U", "hi"), CollectingRenderer())
    assert len(core.locks) == 5


async def test_telegram_pacers_and_blocked_marks_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telegram_sender, "MAX_CHATS", 4)
    sender = telegram_sender.Sender(bot=None, interval_s=0.0,  # type: ignore[arg-type]
                                    group_interval_s=60.0)
    group = sender.pacer(-5)
    async with group:  # its 60 s interval now runs: forgetting it would let a call skip it
        pass
    busy = sender.pacer(1)
    async with busy:  # in use
        for chat in range(2, 20):
            async with sender.pacer(chat):
                pass
        assert len(sender.pacers) == 4  # the two kept, and the two most recent
    assert sender.pacer(1) is busy and sender.pacer(-5) is group
    for chat in range(-20, 0):  # group chats: nothing to report to the core
        sender.mark_blocked(chat)
    assert len(sender.blocked) == 4 and -1 in sender.blocked and -20 not in sender.blocked


def test_discord_permission_warnings_are_bounded(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(discord_messages, "MAX_REMEMBERED", 3)
    handler = discord_messages.MessageHandler(SimpleNamespace(settings=DiscordConfig()),
                                              client=None)  # type: ignore[arg-type]
    for channel in [*range(10), 9]:
        handler.warn_permissions(SimpleNamespace(id=channel, name=f"c{channel}"), ["send"])
    assert len(handler.warned) == 3 and len(handler.thread_starters) == 0
    assert len([r for r in caplog.records if "missing permission" in r.getMessage()]) == 10


class BlockingClassifier(ClassifierGuard):
    """The real ClassifierGuard with a stand-in pipeline that waits for the event loop."""

    def __init__(self, loop_ran: threading.Event) -> None:  # no model to load
        self.labels = {"toxic"}
        self.threshold = 0.5
        self.loop_ran = loop_ran
        self.threads: list[str] = []
        self.pipe = self.score

    def score(self, text: str, truncation: bool = True) -> Sequence[Any]:
        self.threads.append(threading.current_thread().name)
        # On the event loop this would wait in vain: the task that sets the event never runs.
        assert self.loop_ran.wait(timeout=5), "the classifier blocked the event loop"
        return [[{"label": "toxic", "score": 0.9 if "awful" in text else 0.1}]]


async def test_the_classifier_runs_off_the_event_loop(cfg: Config, store: Store) -> None:
    loop_ran = threading.Event()
    classifier = BlockingClassifier(loop_ran)
    core = Core(cfg, store, FakeChatModel(), None, guard=Guards([KeywordGuard([]), classifier]))

    async def meanwhile() -> None:
        await asyncio.sleep(0)  # runs only if the loop is free while the guard checks
        loop_ran.set()

    side = asyncio.create_task(meanwhile())
    reply = await core.handle(Incoming("terminal", "c", "u", "U", "an awful thing"),
                              CollectingRenderer())
    await side
    assert reply.text == "I can't help with that message." and reply.answer_id is None
    assert classifier.threads == ["nightowl-torch"]  # llm.threads.in_short_thread's thread
    loop_ran.clear()
    side = asyncio.create_task(meanwhile())
    ok = await core.handle(Incoming("terminal", "c", "u", "U", "a kind thing"),
                           CollectingRenderer())
    await side
    assert ok.answer_id is not None
