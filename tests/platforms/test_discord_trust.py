"""Owners and reviewers on Discord: the real discord.py against the fake API, real Core and SQLite.

A 👍/👎 pressed by another member of the channel is refused (ephemeral) and nothing is stored;
``/admin review`` lists suggestions with approve/reject buttons that only an admin's press runs.
"""

from __future__ import annotations

from bot.core import Incoming
from tests.fakes import discord_payloads as P
from tests.fakes.discord_harness import DiscordEnv, discord_env
from tests.platforms.test_discord_commands import STRING, done, slash_text

__all__ = ["discord_env"]

NOT_YOURS = "Only the person who asked (or an admin) can rate this answer."


async def test_buttons_pressed_by_another_member_are_refused(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start()
    msg = await fake.user_message(env.alice, "when do owls hunt", mention_bot=True)
    (answer,) = await fake.wait_for(lambda: [m for m in fake.channel_messages(msg["channel_id"])
                                             if m["components"]])
    up, down = fake.custom_ids(answer)
    aid = int(up.split(":")[2])
    for cid in (up, down):
        iid = await fake.press(env.bob, answer, cid)
        (note,) = await fake.wait_for(done(fake, iid))
        assert note["content"] == NOT_YOURS and note["flags"] & 64
    assert await store.get_feedback(aid) is None
    assert answer["components"][0]["components"][0]["style"] == 2  # unchanged

    iid = await fake.press(env.alice, answer, up)
    await fake.wait_for(lambda: answer["components"][0]["components"][0]["style"] == 3)
    assert await store.get_feedback(aid) == 1
    await fake.press(env.root, answer, down)  # an admin may
    await fake.wait_for(lambda: answer["components"][0]["components"][1]["style"] == 4)
    assert await store.get_feedback(aid) == -1


async def test_review_buttons_run_for_admins_only(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start()
    await fake.user_message(env.alice, "are owls wise", mention_bot=True)
    await fake.wait_for(lambda: [m for m in fake.channel_messages(fake.channel_id)
                                 if m["components"]])
    _, text = await slash_text(fake, env.bob, "correct", options=[
        P.option("text", "Very wise.", STRING)])
    assert "no answer to correct" in text  # /correct is for Bob's own answers only
    answer = next(m for m in fake.channel_messages(fake.channel_id) if m["components"])
    aid = int(fake.custom_ids(answer)[0].split(":")[2])
    # a suggestion as a reply-based platform makes it (Bob's correction of Alice's answer)
    bob = Incoming("discord", fake.channel_id, env.bob["id"], "bob", "",
                   reply_to_message_id=answer["id"])
    assert "suggestion" in (await env.core.command(bob, "correct", "Very wise.")).text

    iid, text = await slash_text(fake, env.root, "admin", sub="review",
                                 options=[P.option("action", "list", STRING)])
    assert "c1 · suggestion by bob on Alice's answer" in text
    (listing,) = fake.interaction_messages(iid)
    assert fake.custom_ids(listing) == ["nightowl:cmd:review:approve c1",
                                        "nightowl:cmd:review:reject c1"]
    press = await fake.press(env.bob, listing, "nightowl:cmd:review:approve c1")
    (note,) = await fake.wait_for(done(fake, press))
    assert note["content"] == "/review is for admins only." and note["flags"] & 64
    assert list(await store.db.execute_fetchall("SELECT * FROM reviews")) == []
    press = await fake.press(env.root, listing, "nightowl:cmd:review:approve c1")
    (note,) = await fake.wait_for(done(fake, press))
    assert note["content"].startswith("Approved c1")
    rows = list(await store.db.execute_fetchall("SELECT decision, reviewer FROM reviews"))
    assert rows == [("approved", f"discord:{env.root['id']}")]
    assert aid == (await store.correction_item(1)).answer_id  # type: ignore[union-attr]
    audit = {(a.actor, a.args, a.allowed) for a in await store.audit_log()}
    assert {(env.bob["id"], "approve c1", 0), (env.root["id"], "approve c1", 1)} <= audit

