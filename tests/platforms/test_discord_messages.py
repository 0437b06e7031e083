"""Discord messages: DMs, mentions, replies, threads, streaming, splitting, permissions, errors.

A real discord.py client runs against tests/fakes/discord_api.py; the core is real (SQLite store,
FakeChatModel). Negative checks ("ignored") use a barrier: a later message that is answered.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest

from bot.core import Incoming, Renderer, Reply
from bot.discord.commands import SORRY
from bot.discord.messages import CONTENT_HINT, MENTION_HELP
from tests.fakes import discord_payloads as P
from tests.fakes.discord_harness import DiscordEnv, discord_env

__all__ = ["discord_env"]


def final(fake: Any, channel_id: str, n: int = 1) -> Any:
    """Predicate: the first ``n`` bot messages with buttons in a channel (final answers)."""
    return lambda: (lambda ms: ms if len(ms) >= n else None)(
        [m for m in fake.channel_messages(channel_id) if m["components"]])


async def test_dm_answered_with_typing_and_history_survives_restart(discord_env: DiscordEnv
                                                                    ) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(allow_dms=True)
    msg = await fake.user_message(env.alice, "my name is Alice", dm=True)
    dm = msg["channel_id"]
    (answer,) = await fake.wait_for(final(fake, dm))
    assert answer["content"] == "You said: my name is Alice."
    assert answer["message_reference"]["message_id"] == msg["id"]
    assert fake.find("POST", rf"/channels/{dm}/typing")
    aid = (await env.store.last_answer(1)).id  # type: ignore[union-attr]
    assert fake.custom_ids(answer) == [f"nightowl:fb:{aid}:up", f"nightowl:fb:{aid}:down"]

    await env.start(allow_dms=True, restart=True)  # new process: new client, Core; same SQLite
    await fake.user_message(env.alice, "what is my name?", dm=True)
    await fake.wait_for(final(fake, dm, 2))
    history = [m["content"] for m in env.model.calls[-1]["messages"]]
    assert "my name is Alice" in history
    assert "You said: my name is Alice." in history


async def test_mention_without_content_intent(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start()  # message_content = false (default)
    ch = fake.channel_id
    await fake.user_message(env.bob, "chatting with friends, not the bot")
    await fake.user_message(env.alice, "", mention_bot=True)
    help_reply = await fake.wait_for(lambda: [m for m in fake.channel_messages(ch)
                                              if m["content"] == MENTION_HELP])
    assert help_reply[0]["message_reference"] is not None
    await fake.user_message(env.alice, "what time is it", mention_bot=True)
    (answer,) = await fake.wait_for(final(fake, ch))
    assert answer["content"] == "You said: what time is it."  # the mention was stripped
    # Bob's message had blanked content and no mention: never answered, never sent to the model.
    assert [c["messages"][-1]["content"] for c in env.model.calls] == ["what time is it"]
    assert not fake.intents & P.MESSAGE_CONTENT_INTENT


async def test_reply_to_bot_is_answered(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(message_content=True)
    ch = fake.channel_id
    await fake.user_message(env.alice, "first question", mention_bot=True)
    (first,) = await fake.wait_for(final(fake, ch))
    reply = await fake.user_message(env.alice, "and a follow-up", reply_to=first)
    await fake.wait_for(final(fake, ch, 2))
    assert env.model.calls[-1]["messages"][-1]["content"] == "and a follow-up"
    answers = [m for m in fake.channel_messages(ch) if m["components"]]
    assert answers[1]["message_reference"]["message_id"] == reply["id"]


async def test_reply_without_content_intent_gets_a_hint(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start()
    ch = fake.channel_id
    await fake.user_message(env.alice, "first question", mention_bot=True)
    (first,) = await fake.wait_for(final(fake, ch))
    await fake.user_message(env.alice, "no ping reply", reply_to=first)
    await fake.wait_for(lambda: [m for m in fake.channel_messages(ch)
                                 if m["content"] == CONTENT_HINT])


async def test_thread_mode(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(reply_in_threads=True, message_content=True)
    ask = await fake.user_message(env.alice, "explain owls", mention_bot=True)
    thread_id = ask["id"]  # a thread created from a message has that message's id
    await fake.wait_for(final(fake, thread_id))
    assert fake.find("POST", rf"/channels/{fake.channel_id}/messages/{thread_id}/threads")
    assert fake.channels[thread_id]["name"] == "explain owls"
    assert not fake.channel_messages(fake.channel_id)  # nothing posted in the channel itself
    await fake.user_message(env.bob, "bob chimes in", channel_id=thread_id)
    await fake.user_message(env.alice, "and barn owls?", channel_id=thread_id)
    await fake.wait_for(final(fake, thread_id, 2))
    asked = [c["messages"][-1]["content"] for c in env.model.calls]
    assert asked == ["explain owls", "and barn owls?"]  # Bob is not the starter
    history = [m["content"] for m in env.model.calls[-1]["messages"]]
    assert "explain owls" in history  # the thread is one conversation

    # After a restart the thread still belongs to Alice (starter looked up from Discord).
    await env.start(restart=True, reply_in_threads=True, message_content=True)
    await fake.user_message(env.alice, "and snowy owls?", channel_id=thread_id)
    await fake.wait_for(final(fake, thread_id, 3))
    assert fake.find("GET", rf"/channels/{fake.channel_id}/messages/{thread_id}")


async def test_streamed_edits_are_throttled(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    env.model.delay_s = 0.02
    env.model.responder = lambda msgs: " ".join(f"word{i}" for i in range(60))
    interval = 0.2
    await env.start(allow_dms=True, stream_edit_interval_s=interval)
    msg = await fake.user_message(env.alice, "stream please", dm=True)
    (answer,) = await fake.wait_for(final(fake, msg["channel_id"]))
    mid = answer["id"]
    posts = fake.find("POST", rf"/channels/{msg['channel_id']}/messages")
    edits = fake.find("PATCH", rf"/channels/{msg['channel_id']}/messages/{mid}")
    assert len(posts) == 1 and len(edits) >= 2
    assert posts[0].body["content"].endswith(" …")  # the first streamed part
    assert all(e.body["content"].endswith(" …") for e in edits[:-1])
    times = [posts[0].at] + [e.at for e in edits[:-1]]  # the final render is not throttled
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval * 0.8, gaps
    assert answer["content"] == " ".join(f"word{i}" for i in range(60))


async def test_long_answer_split_at_paragraphs(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    paragraphs = [f"Paragraph {i} says something. " * 7 + f"End of part {i}." for i in range(24)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 5000
    env.model.responder = lambda msgs: text
    await env.start(allow_dms=True, stream_edit_interval_s=0.5)
    msg = await fake.user_message(env.alice, "a long story", dm=True)
    await fake.wait_for(final(fake, msg["channel_id"]))
    parts = fake.channel_messages(msg["channel_id"])
    assert len(parts) == 3
    assert all(len(p["content"]) <= 2000 for p in parts)
    assert [bool(p["components"]) for p in parts] == [False, False, True]
    assert all(p["content"].endswith(".") and p["content"].split("\n\n")[-1] in paragraphs
               for p in parts)  # cut between paragraphs
    assert "\n\n".join(p["content"] for p in parts) == text


async def test_allowed_channels_and_missing_permissions(discord_env: DiscordEnv,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    env, fake = discord_env, discord_env.fake
    other = fake.add_channel("random")["id"]
    locked = fake.add_channel("locked", [P.overwrite(fake.bot["id"], deny=P.SEND_MESSAGES)])["id"]
    await env.start(allowed_channels=[int(fake.channel_id), int(locked)])
    await fake.user_message(env.alice, "hello random", channel_id=other, mention_bot=True)
    await fake.user_message(env.alice, "hello locked", channel_id=locked, mention_bot=True)
    await fake.user_message(env.alice, "hello again locked", channel_id=locked, mention_bot=True)
    await fake.user_message(env.alice, "hello general", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id))
    assert not fake.channel_messages(other) and not fake.channel_messages(locked)
    warnings = [r.getMessage() for r in caplog.records if "missing permission" in r.getMessage()]
    assert len(warnings) == 1 and "Send Messages" in warnings[0] and "#locked" in warnings[0]
    iid = await fake.slash(env.alice, "ask", options=[P.option("question", "hi", 3)],
                           channel_id=other)
    refusal = await fake.wait_for(lambda: fake.interaction_messages(iid))
    assert refusal[0]["content"] == "I don't answer in this channel." and refusal[0]["flags"] & 64


async def test_attachments_in_chat_are_refused_with_reason(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(allow_dms=True, max_attachment_mb=0.001)
    atts = [fake.add_file("tool.exe", b"MZ" * 10), fake.add_file("big.md", b"x" * 5000),
            fake.add_file("notes.md", b"# notes")]
    msg = await fake.user_message(env.alice, "", dm=True, attachments=atts)
    (note,) = await fake.wait_for(lambda: fake.channel_messages(msg["channel_id"]))
    lines = note["content"].splitlines()
    assert "tool.exe" in lines[0] and "unsupported type .exe" in lines[0]
    assert "big.md" in lines[1] and "too large" in lines[1]
    assert "notes.md" in lines[2] and "/admin ingest" in lines[2]
    assert not env.model.calls and not env.kb.ingested


async def test_rate_limit_and_server_errors_are_retried(discord_env: DiscordEnv,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(allow_dms=True)
    fake.inject("POST", r"/channels/\d+/messages", 429, retry_after=0.3)
    fake.inject("PATCH", r"/channels/\d+/messages/\d+", 502)
    msg = await fake.user_message(env.alice, "despite limits", dm=True)
    (answer,) = await fake.wait_for(final(fake, msg["channel_id"]))
    assert answer["content"] == "You said: despite limits."
    dm = msg["channel_id"]
    assert len(fake.find("POST", rf"/channels/{dm}/messages", status=429)) == 1
    assert len(fake.find("PATCH", rf"/channels/{dm}/messages/\d+", status=502)) == 1
    assert any("rate limited" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


async def test_handler_error_is_reported_and_bot_keeps_running(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    env.allow_errors(r"unexpected error in Discord event on_message")
    await env.start(allow_dms=True)
    real_handle = env.core.handle

    async def broken(inc: Incoming, renderer: Renderer) -> Reply:
        raise RuntimeError("database exploded")

    env.core.handle = broken  # type: ignore[method-assign]
    msg = await fake.user_message(env.alice, "this fails", dm=True)
    dm = msg["channel_id"]
    await fake.wait_for(lambda: [m for m in fake.channel_messages(dm) if m["content"] == SORRY])
    env.core.handle = real_handle  # type: ignore[method-assign]
    await fake.user_message(env.alice, "this works", dm=True)
    (answer,) = await fake.wait_for(final(fake, dm))
    assert answer["content"] == "You said: this works."


async def test_answer_message_ids_are_recorded(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start(allow_dms=True)
    msg = await fake.user_message(env.alice, "remember my ids", dm=True)
    (answer,) = await fake.wait_for(final(fake, msg["channel_id"]))
    # recorded before the buttons were shown (what a 👍/👎 press is checked against)
    found = await env.store.find_by_platform_id("discord", msg["channel_id"], answer["id"])
    assert found is not None and found.role == "assistant"
    assert found.text == "You said: remember my ids."


async def test_unanswered_messages_are_recovered_after_a_restart(discord_env: DiscordEnv
                                                                 ) -> None:
    env, fake = discord_env, discord_env.fake
    dm = fake.dm_channel_for(env.alice)["id"]
    user = await env.store.ensure_user("discord", env.alice["id"], "alice")
    conv = await env.store.active_conversation(user.id, "discord", dm)
    await env.store.add_message(conv, "user", "asked just before the crash", status="pending")
    bot = await env.start()
    assert await bot.recovered() == 1
    (answer,) = await fake.wait_for(final(fake, dm))
    assert answer["content"] == "You said: asked just before the crash."
    assert await env.store.pending_messages() == []
