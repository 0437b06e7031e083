"""One Telegram user cannot stall the others: the real PTB polling the fake Bot API.

Latency is measured from the fake server's own timestamps: the moment a user's update was put
on the server, and the first ``sendMessage`` into that user's chat. The idle bot sets the
baseline; a burst of 100 messages from one user (one getUpdates batch), or one user's
follow-ups while their answer streams, may add at most about a second for another user.
Production pacing and rate limits apply (1.5 s between messages in a chat, a burst of 5,
two messages in flight per user).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llm.base import ChatMessage
from llm.fake import FakeChatModel
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.platforms.test_telegram import Env, running

A, B, C = 5001, 5002, 5003
SLACK_S = 1.0  # what another user's burst may add to a first reply
PRODUCTION = {"telegram__stream_edit_interval_s": 1.5, "limits__user_messages_per_minute": 20.0,
              "limits__user_burst": 5, "limits__chat_messages_per_minute": 60.0,
              "limits__max_concurrent_per_user": 2, "telegram__ack_timeout_s": 2.0}


def long_for(user_id: int, words: int) -> Any:
    """The answer to ``user_id``'s first message is ``words`` long; every other answer short."""
    def respond(messages: Sequence[ChatMessage]) -> str:
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        n = words if last == f"long {user_id}" else 3
        return " ".join(f"w{i}" for i in range(n)) + "."
    return respond


@pytest.fixture
async def fake() -> Any:
    async with FakeTelegramAPI() as api:
        yield api


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def first_reply_at(fake: FakeTelegramAPI, chat_id: int) -> float | None:
    sends = [c.at for c in fake.calls_of("sendMessage") if int(c.params["chat_id"]) == chat_id]
    return sends[0] if sends else None


async def first_reply_latency(fake: FakeTelegramAPI, user_id: int, text: str) -> float:
    """Push ``user_id``'s message; seconds until the first message into their chat."""
    user = fake.user(user_id, f"U{user_id}")
    update = fake.text(fake.private(user), user, text)
    pushed = time.monotonic()
    fake.push(update)
    await fake.wait_until(lambda: first_reply_at(fake, user_id) is not None, within_s=120)
    at = first_reply_at(fake, user_id)
    assert at is not None
    got = [c.answered_at for c in fake.calls_of("getUpdates")
           if update["update_id"] in c.returned]
    print(f"\nuser {user_id}: handed to the bot after {got[0] - pushed:.3f} s, "
          f"answered after {at - pushed:.3f} s")
    return at - pushed


async def redelivered(fake: FakeTelegramAPI, update_id: int) -> None:
    """Wait until Telegram gave ``update_id`` four times: the bot received it and polls on
    without confirming it, past the refusals settling (the quiet state, re-polling every
    ``RECHECK_S``, in which another user's message must not wait)."""
    await fake.wait_until(lambda: sum(update_id in c.returned
                                      for c in fake.calls_of("getUpdates")) >= 4)


def keyboard_at(fake: FakeTelegramAPI, chat_id: int) -> float | None:
    """When the first answer in the chat got its keyboard (its final render)."""
    calls = [c.at for c in fake.calls if c.method in ("sendMessage", "editMessageText")
             and int(c.params.get("chat_id", 0)) == chat_id and c.params.get("reply_markup")]
    return calls[0] if calls else None


def finished(fake: FakeTelegramAPI, chat_id: int, n: int) -> bool:
    """``n`` answers with their 👍/👎 keyboard are in the chat."""
    return sum(1 for m in fake.chat_messages(chat_id) if m.reply_markup) >= n


@pytest.mark.parametrize(("size", "slack"), [(100, SLACK_S), (150, 2.0 + SLACK_S)],
                         ids=["100", "150"])
async def test_a_burst_does_not_delay_another_user(tmp_path: Path, fake: FakeTelegramAPI,
                                                   size: int, slack: float) -> None:
    """100 messages: ~1 s at most. More than Telegram's window of 100 behind A's follow-up
    waiting for its answer: that follow-up is confirmed after ``ack_timeout_s`` (2 s)."""
    model = FakeChatModel(long_for(A, 150), delay_s=0.02)  # A's first answer streams for 3 s
    async with running(tmp_path, fake, polling=True, model=model, **PRODUCTION) as env:
        idle = await first_reply_latency(fake, B, "hello on an idle bot")
        await fake.wait_until(lambda: finished(fake, B, 1))
        a = fake.user(A, "Flood")
        chat = fake.private(a)
        burst = [fake.text(chat, a, f"long {A}")] + [fake.text(chat, a, f"spam {i}")
                                                      for i in range(size - 1)]
        for update in burst:  # no await in between: the next getUpdates returns all 100
            fake.push(update)
        ids = [u["update_id"] for u in burst]
        await fake.wait_until(lambda: any(c.returned[:100] == ids[:100]
                                          for c in fake.calls_of("getUpdates")))
        await redelivered(fake, ids[1])  # the bot holds A's follow-up and polls on
        busy = await first_reply_latency(fake, C, "am I stuck behind the flood?")
        print(f"\nfirst reply of another user: idle {idle:.2f} s, during a burst of {size} "
              f"{busy:.2f} s")
        assert busy <= idle + slack, (idle, busy)
        await fake.wait_until(lambda: finished(fake, C, 1) and finished(fake, A, 2), 120)
        await assert_all_confirmed(env, fake)
        refusals = [m.text for m in fake.chat_messages(A) if not m.reply_markup]
        assert refusals and all("please wait" in t for t in refusals)
        assert len(refusals) <= 5  # not 98 notices paced 1.5 s apart into A's chat


async def test_follow_ups_while_streaming_do_not_delay_another_user(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    model = FakeChatModel(long_for(A, 300), delay_s=0.02)  # A's first answer streams for 6 s
    async with running(tmp_path, fake, polling=True, model=model, **PRODUCTION) as env:
        idle = await first_reply_latency(fake, B, "hello on an idle bot")
        await fake.wait_until(lambda: finished(fake, B, 1))
        a = fake.user(A, "Chatty")
        chat = fake.private(a)
        fake.push(fake.text(chat, a, f"long {A}"))
        await fake.wait_until(lambda: first_reply_at(fake, A) is not None)
        follow_ups = [fake.text(chat, a, f"and another thing {i}") for i in range(3)]
        for update in follow_ups:
            fake.push(update)
        await redelivered(fake, follow_ups[0]["update_id"])  # held while A's answer streams
        busy = await first_reply_latency(fake, C, "my turn?")
        print(f"\nfirst reply of another user: idle {idle:.2f} s, during follow-ups "
              f"{busy:.2f} s")
        assert busy <= idle + SLACK_S, (idle, busy)
        await fake.wait_until(lambda: finished(fake, C, 1) and finished(fake, A, 2), 120)
        c_first, a_done = first_reply_at(fake, C), keyboard_at(fake, A)
        assert c_first is not None and a_done is not None and c_first < a_done, \
            "the test must measure while A's first answer still streams"
        await fake.wait_until(lambda: finished(fake, C, 1) and finished(fake, A, 2), 120)
        await assert_all_confirmed(env, fake)


async def assert_all_confirmed(env: Env, fake: FakeTelegramAPI) -> None:
    """Every update pushed so far is eventually confirmed (the offset passes it)."""
    last = max(i for c in fake.calls_of("getUpdates") for i in c.returned)
    await fake.wait_until(lambda: any(int(c.params.get("offset") or 0) > last
                                      for c in fake.calls_of("getUpdates")), 60)


async def test_a_storage_error_means_redelivery_not_loss(tmp_path: Path, fake: FakeTelegramAPI,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """Several users' updates in one batch; storing one of them fails once. Its update is not
    confirmed until it is stored; Telegram delivers it again, it is answered once; the
    others are answered meanwhile, and no offset ever passes an unstored message."""
    users = {uid: fake.user(uid, f"U{uid}") for uid in (A, B, C)}
    chats = {uid: fake.private(u) for uid, u in users.items()}
    order = [(A, "a one"), (B, "b one"), (A, "a two"), (C, "c one"), (B, "b two")]
    updates = [fake.text(chats[uid], users[uid], text) for uid, text in order]
    by_id = {u["update_id"]: u["message"]["text"] for u in updates}
    failing = next(u["update_id"] for u in updates if u["message"]["text"] == "a two")
    problems: list[str] = []
    box: list[Env] = []

    async def on_confirm(offset: int) -> None:  # the fake calls this on every getUpdates
        if not box:
            return
        stored = {r[0] for r in await box[0].db("SELECT text FROM messages WHERE role='user'")}
        problems.extend(f"update {i} ({t!r}) confirmed before it was stored"
                        for i, t in by_id.items() if i < offset and t not in stored)

    fake.on_get_updates = on_confirm
    async with running(tmp_path, fake, polling=True,
                       model=FakeChatModel(delay_s=0.01)) as env:
        box.append(env)
        real_add = env.store.add_message
        failures = []

        async def add_message(conv: int, role: str, text: str, **kw: Any) -> int:
            if text == "a two" and not failures:
                failures.append(text)
                raise sqlite3.OperationalError("database is locked")
            return await real_add(conv, role, text, **kw)

        monkeypatch.setattr(env.store, "add_message", add_message)
        for update in updates:
            fake.push(update)
        await fake.wait_until(lambda: finished(fake, A, 2) and finished(fake, B, 2)
                              and finished(fake, C, 1))
        await assert_all_confirmed(env, fake)
        rows = await env.db("SELECT text, status FROM messages WHERE role = 'user' ORDER BY id")
        assert sorted(rows) == sorted((t, "done") for _, t in order)
        deliveries = [c for c in fake.calls_of("getUpdates") if failing in c.returned]
        assert len(deliveries) >= 2  # Telegram gave it again: it was never confirmed
        answers = [m.text for m in fake.chat_messages(A)]
        assert answers == ["You said: a one.", "You said: a two."]  # no apology, no double
    assert failures == ["a two"] and not problems, problems
    assert "database is locked" in caplog.text
