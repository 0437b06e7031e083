"""Discord obeys the operator: allowlists, DMs, channels for every command and button, no pings.

The real discord.py client against tests/fakes/discord_api.py, real Core and SQLite. Negative
checks ("ignored") use a barrier: a later message that is answered (a refused message is
decided before its handler's first await, so it is done by then).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bot.core.text import pseudonym
from bot.discord.access import NO_DMS, NOT_HERE, PRIVATE
from bot.discord.buttons import STALE
from bot.discord.config import DiscordConfig
from bot.discord.messages import MENTION_HELP
from tests.fakes import discord_payloads as P
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_harness import DiscordEnv, discord_env
from tests.platforms.test_discord_commands import done
from tests.platforms.test_discord_messages import final

__all__ = ["discord_env"]


def asked(env: DiscordEnv) -> list[str]:
    """The questions the model was given, in order."""
    return [c["messages"][-1]["content"] for c in env.model.calls]


async def ephemeral_reply(fake: FakeDiscord, iid: str) -> str:
    (msg,) = await fake.wait_for(done(fake, iid))
    assert msg["flags"] & 64, msg
    return str(msg["content"])


async def test_a_guild_not_in_allowed_guilds_is_ignored(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    elsewhere = fake.add_guild("elsewhere")["id"]
    await env.start(allowed_guilds=[int(fake.guild_id)])
    await fake.user_message(env.alice, "hello from elsewhere", channel_id=elsewhere,
                            mention_bot=True)
    await fake.user_message(env.alice, "hello from home", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id))
    assert not fake.channel_messages(elsewhere) and asked(env) == ["hello from home"]
    for name in ("ask", "new"):  # commands there are refused, in Telegram's words
        iid = await fake.slash(env.alice, name, channel_id=elsewhere, options=[
            P.option("question", "hi", 3)] if name == "ask" else [])
        assert await ephemeral_reply(fake, iid) == PRIVATE.format(user_id=env.alice["id"])
    assert asked(env) == ["hello from home"]
    assert await env.store.get_user("discord", env.alice["id"]) is not None  # from home only
    assert [a.action for a in await env.store.audit_log()] == []

    await fake.user_message(env.root, "an admin is answered anywhere", channel_id=elsewhere,
                            mention_bot=True)
    await fake.wait_for(final(fake, elsewhere))


async def test_a_user_not_in_allowed_users_gets_no_answer(discord_env: DiscordEnv,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    caplog.set_level(logging.DEBUG, logger="nightowl")
    env, fake = discord_env, discord_env.fake
    await env.start(allowed_users=[int(env.alice["id"])], allow_dms=True)
    await fake.user_message(env.bob, "bob in the guild", mention_bot=True)
    bob_dm = await fake.user_message(env.bob, "bob in a DM", dm=True)
    await fake.user_message(env.alice, "alice in the guild", mention_bot=True)
    alice_dm = await fake.user_message(env.alice, "alice in a DM", dm=True)
    await fake.wait_for(final(fake, fake.channel_id))
    await fake.wait_for(final(fake, alice_dm["channel_id"]))
    (refusal,) = await fake.wait_for(lambda: fake.channel_messages(bob_dm["channel_id"]))
    assert refusal["content"] == PRIVATE.format(user_id=env.bob["id"])
    assert not refusal["components"] and sorted(asked(env)) == ["alice in a DM",
                                                                "alice in the guild"]
    assert await env.store.get_user("discord", env.bob["id"]) is None  # nothing stored
    iid = await fake.slash(env.bob, "ask", options=[P.option("question", "let me in", 3)])
    assert await ephemeral_reply(fake, iid) == PRIVATE.format(user_id=env.bob["id"])
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()
                or "ignored user" in r.getMessage()]
    assert len(refusals) >= 3, refusals  # guild message, DM, slash command
    for line in refusals:  # logged under a pseudonym, never the raw Discord id (L11)
        assert env.bob["id"] not in line and pseudonym("discord", env.bob["id"]) in line, line

    # As on Telegram the lists add up: anyone in an allowed guild, listed users anywhere.
    await env.start(restart=True, allowed_users=[int(env.alice["id"])], allow_dms=True,
                    allowed_guilds=[int(fake.guild_id)])
    await fake.user_message(env.bob, "bob in an allowed guild", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id, 2))
    await fake.user_message(env.bob, "but a DM is in no guild", dm=True)
    await fake.wait_for(lambda: len(fake.channel_messages(bob_dm["channel_id"])) == 2)
    assert fake.channel_messages(bob_dm["channel_id"])[1]["content"] == refusal["content"]


async def test_dms_are_ignored_by_default_and_answered_when_enabled(discord_env: DiscordEnv
                                                                   ) -> None:
    env, fake = discord_env, discord_env.fake
    assert DiscordConfig().allow_dms is False
    await env.start()  # the default
    dm = (await fake.user_message(env.alice, "a DM nobody allowed", dm=True))["channel_id"]
    await fake.user_message(env.alice, "a mention", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id))
    assert fake.channel_messages(dm) == [] and asked(env) == ["a mention"]
    assert not fake.find("POST", rf"/channels/{dm}/.*")  # not even typing
    iid = await fake.slash(env.alice, "ask", dm=True, options=[P.option("question", "hi", 3)])
    assert await ephemeral_reply(fake, iid) == NO_DMS
    iid = await fake.slash(env.alice, "optout", dm=True)
    assert await ephemeral_reply(fake, iid) == NO_DMS
    user = await env.store.get_user("discord", env.alice["id"])
    assert user is not None and not user.opted_out

    await env.start(restart=True, allow_dms=True)
    await fake.user_message(env.alice, "a DM now allowed", dm=True)
    (answer,) = await fake.wait_for(final(fake, dm))
    assert answer["content"] == "You said: a DM now allowed."


def every_command(fake: FakeDiscord) -> list[tuple[str, str | None]]:
    """Every registered slash command as (name, subcommand) — the whole synced tree."""
    out: list[tuple[str, str | None]] = []
    for cmd in fake.commands["global"]:
        subs = [o["name"] for o in cmd.get("options", []) if o["type"] == 1]
        out += [(cmd["name"], s) for s in subs] or [(cmd["name"], None)]
    return out


async def test_every_command_and_button_respects_allowed_channels(discord_env: DiscordEnv
                                                                  ) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    other = fake.add_channel("random")["id"]
    await env.start(allowed_channels=[int(fake.channel_id)])
    commands = every_command(fake)
    assert {("ask", None), ("new", None), ("correct", None), ("forget", None),
            ("admin", "status")} <= set(commands)
    for name, sub in commands:
        for who in (env.alice, env.bob):
            iid = await fake.slash(who, name, sub=sub, channel_id=other)
            assert await ephemeral_reply(fake, iid) == NOT_HERE, (name, sub)
    assert env.model.calls == [] and await store.audit_log() == []
    assert await store.get_user("discord", env.alice["id"]) is None

    # Buttons shown in a channel the operator later leaves out are refused there as well.
    await fake.user_message(env.alice, "rate me", mention_bot=True)
    (answer,) = await fake.wait_for(final(fake, fake.channel_id))
    iid = await fake.slash(env.alice, "forget")
    (prompt,) = await fake.wait_for(done(fake, iid))
    up = fake.custom_ids(answer)[0]
    await env.start(restart=True, allowed_channels=[int(other)])
    for msg, cid in ((answer, up), (prompt, fake.custom_ids(prompt)[0])):
        assert await ephemeral_reply(fake, await fake.press(env.alice, msg, cid)) == NOT_HERE
    assert await store.get_feedback(int(up.split(":")[2])) is None
    assert await store.get_user("discord", env.alice["id"]) is not None  # not forgotten


def mention_requests(fake: FakeDiscord) -> list[Any]:
    """Requests that sent content with a mention or @everyone (messages, edits, webhooks)."""
    def content(req: Any) -> str:
        body = req.body if isinstance(req.body, dict) else {}
        if req.path.endswith("/callback"):
            body = body.get("data") or {}
        return str(body.get("content") or "")
    return [r for r in fake.requests if "<@" in content(r) or "@everyone" in content(r)]


async def test_model_output_pings_nobody(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    ping = f"<@{env.bob['id']}> <@&{env.admin_role}> @everyone @here"
    words = " ".join(["word"] * 360)  # then a paragraph past 2000 characters: a new message
    env.model.responder = lambda msgs: f"{ping} {words}\n\n{ping} {words}"
    await env.start(stream_edit_interval_s=0.0)
    await fake.user_message(env.alice, "ping people please", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id))
    iid = await fake.slash(env.alice, "ask", options=[P.option("question", "and here", 3)])
    await fake.wait_for(done(fake, iid, 2, buttons=True))
    env.model.responder = lambda msgs: ping
    await fake.user_message(env.alice, "", mention_bot=True)  # the help reply, a reference
    await fake.wait_for(lambda: [m for m in fake.channel_messages(fake.channel_id)
                                 if m["content"] == MENTION_HELP])
    await fake.user_message(env.alice, "short one", mention_bot=True)
    await fake.wait_for(final(fake, fake.channel_id, 3))

    sent = mention_requests(fake)
    kinds = {(r.method, r.path.split("/")[1]) for r in sent}
    assert {("POST", "channels"), ("PATCH", "channels"), ("PATCH", "webhooks"),
            ("POST", "webhooks")} <= kinds, kinds  # sends, edits, /ask response, followups
    for r in sent:
        assert fake.pinged(r) == set(), (r.method, r.path, r.body.get("allowed_mentions"))
        allowed = (r.body.get("data") or {} if r.path.endswith("/callback") else r.body
                   )["allowed_mentions"]
        assert allowed["parse"] == [] and not allowed.get("replied_user")
        assert not allowed.get("users") and not allowed.get("roles")
    replies = [r for r in fake.find("POST", r"/channels/\d+/messages")
               if r.body.get("message_reference")]
    assert replies and all(fake.pinged(r) == set() for r in replies)  # no reply ping either


async def test_feedback_counts_only_on_the_answers_own_message(discord_env: DiscordEnv
                                                               ) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start()
    ch = fake.channel_id
    await fake.user_message(env.alice, "first", mention_bot=True)
    await fake.user_message(env.alice, "second", mention_bot=True)
    first, second = await fake.wait_for(final(fake, ch, 2))
    if fake.custom_ids(first)[0] > fake.custom_ids(second)[0]:
        first, second = second, first
    a_up = fake.custom_ids(first)[0]
    aid = int(a_up.split(":")[2])
    await fake.user_message(env.alice, "", mention_bot=True)
    (hint,) = await fake.wait_for(lambda: [m for m in fake.channel_messages(ch)
                                           if m["content"] == MENTION_HELP])
    other = fake.add_channel("elsewhere")["id"]
    forged = [{**second, "components": first["components"]},  # another answer's message
              {**hint, "components": first["components"]},  # a message showing no answer
              {**first, "channel_id": other}]  # the right id, in another channel
    for msg in forged:
        assert await ephemeral_reply(fake, await fake.press(env.alice, msg, a_up)) == STALE
    assert await store.get_feedback(aid) is None

    await fake.press(env.alice, first, a_up)  # on its own message it counts
    await fake.wait_for(lambda: first["components"][0]["components"][0]["style"] == 3)
    assert await store.get_feedback(aid) == 1
