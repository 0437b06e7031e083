"""Discord slash commands, admin commands, buttons (also after a restart), sync and startup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discord
import pytest

from bot.core import CommandResult, ConfigError, Incoming
from bot.discord.client import DiscordBot
from bot.discord.commands import SORRY
from tests.fakes import discord_payloads as P
from tests.fakes.discord_harness import DiscordEnv, discord_env

__all__ = ["discord_env"]

STRING, ATTACHMENT = 3, 11


def done(fake: Any, iid: str, n: int = 1, buttons: bool = False) -> Any:
    """Predicate: the interaction's messages once its original response stopped 'thinking'
    (and, with ``buttons``, once the last one carries the feedback buttons: a final answer)."""
    def check() -> list[dict[str, Any]] | None:
        msgs = fake.interaction_messages(iid)
        if len(msgs) >= n and all(not m["flags"] & 128 and m["content"] for m in msgs) \
                and (not buttons or msgs[-1]["components"]):
            return msgs
        return None
    return check


async def slash_text(fake: Any, user: dict[str, Any], name: str, *, n: int = 1,
                     **kw: Any) -> tuple[str, str]:
    iid = await fake.slash(user, name, **kw)
    msgs = await fake.wait_for(done(fake, iid, n, buttons=name == "ask"))
    return iid, "\n".join(m["content"] for m in msgs)


async def test_ask_and_user_commands(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start()
    iid, text = await slash_text(fake, env.alice, "ask", options=[
        P.option("question", "when does retraining happen every night", STRING)])
    assert fake.interactions[iid]["acked"] == 5 and not fake.interactions[iid]["ephemeral"]
    assert text.startswith("You said: when does retraining happen every night. Based on [1].")
    assert "Sources:\n[1] guide.md › Retraining" in text
    (answer,) = fake.interaction_messages(iid)
    assert fake.custom_ids(answer)[0].startswith("nightowl:fb:")

    iid, text = await slash_text(fake, env.alice, "sources")
    assert fake.interactions[iid]["ephemeral"]
    assert "[1] guide.md › Retraining (score 0.90)" in text
    _, text = await slash_text(fake, env.alice, "correct", options=[
        P.option("text", "At three in the morning.", STRING)])
    assert "correction" in text
    rows = list(await store.db.execute_fetchall("SELECT text FROM corrections"))
    assert [r[0] for r in rows] == ["At three in the morning."]

    _, text = await slash_text(fake, env.alice, "optout")
    assert "will not be used" in text
    user = await store.get_user("discord", env.alice["id"])
    assert user is not None and user.opted_out
    await slash_text(fake, env.alice, "optin")
    user = await store.get_user("discord", env.alice["id"])
    assert user is not None and not user.opted_out

    _, text = await slash_text(fake, env.alice, "new")
    assert "new conversation" in text
    await slash_text(fake, env.alice, "ask", options=[P.option("question", "fresh start",
                                                                 STRING)])
    assert [m["role"] for m in env.model.calls[-1]["messages"]] == ["system", "user"]


async def test_forget_with_confirm_button_and_stale_feedback(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start(allow_dms=True)
    msg = await fake.user_message(env.alice, "remember me", dm=True)
    (answer,) = await fake.wait_for(lambda: [m for m in fake.channel_messages(msg["channel_id"])
                                             if m["components"]])
    iid, text = await slash_text(fake, env.alice, "forget")
    assert "Are you sure?" in text
    (prompt,) = fake.interaction_messages(iid)
    uid = env.alice["id"]
    assert fake.custom_ids(prompt) == [f"nightowl:forget:{uid}:yes", f"nightowl:forget:{uid}:no"]

    other = await fake.press(env.bob, prompt, f"nightowl:forget:{uid}:yes")
    (refusal,) = await fake.wait_for(done(fake, other))
    assert "someone else's" in refusal["content"]
    assert await store.get_user("discord", uid) is not None

    press = await fake.press(env.alice, prompt, f"nightowl:forget:{uid}:yes")
    await fake.wait_for(lambda: prompt["content"].startswith("Deleted"))
    assert fake.interactions[press]["acked"] == 6 and prompt["components"] == []
    assert "Deleted 2 messages" in prompt["content"]
    assert await store.get_user("discord", uid) is None

    # The old 👍 now points at a deleted answer: acknowledged, explained, nothing recorded.
    stale = await fake.press(env.alice, answer, fake.custom_ids(answer)[0])
    (note,) = await fake.wait_for(done(fake, stale))
    assert note["content"] == "That answer no longer exists." and note["flags"] & 64


async def test_feedback_buttons_round_trip_and_survive_restart(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start(allow_dms=True)
    msg = await fake.user_message(env.alice, "rate me", dm=True)
    (answer,) = await fake.wait_for(lambda: [m for m in fake.channel_messages(msg["channel_id"])
                                             if m["components"]])
    up, down = fake.custom_ids(answer)
    aid = int(up.split(":")[2])
    iid = await fake.press(env.alice, answer, up)
    await fake.wait_for(lambda: answer["components"][0]["components"][0]["style"] == 3)
    assert fake.interactions[iid]["acked"] == 7  # the view was updated in place
    assert await store.get_feedback(aid) == 1

    await env.start(allow_dms=True, restart=True)
    iid = await fake.press(env.alice, answer, down)
    await fake.wait_for(lambda: answer["components"][0]["components"][1]["style"] == 4)
    assert await store.get_feedback(aid) == -1
    assert answer["components"][0]["components"][0]["style"] == 2

    unknown = await fake.press(env.alice, {**answer, "components": [{"type": 1, "components": [
        {"type": 2, "style": 1, "label": "old", "custom_id": "someone-elses:button"}]}]},
        "someone-elses:button")
    await fake.wait_for(lambda: fake.interactions[unknown]["acked"] == 6)
    assert await store.get_feedback(aid) == -1


ADMIN_CALLS: list[tuple[str, list[dict[str, Any]]]] = [
    ("status", []), ("retrain", []), ("adapters", []),
    ("rollback", [P.option("version", "v0001", STRING)]),
    ("probe", [P.option("action", "add", STRING), P.option("text", "2+2 => 4", STRING)]),
]


async def test_admin_commands_for_admins_and_refusals(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start()
    for sub, opts in ADMIN_CALLS:  # Bob is no admin: refused, ephemeral, audited
        iid, text = await slash_text(fake, env.bob, "admin", sub=sub, options=opts)
        assert text == f"/{sub} is for admins only." and fake.interactions[iid]["ephemeral"]
    assert env.learning.retrains == 0 and not env.learning.probes
    audit = await store.audit_log()
    assert {(a.actor, a.action, a.allowed) for a in audit} == {
        (env.bob["id"], sub, 0) for sub, _ in ADMIN_CALLS}

    outputs = {}
    for sub, opts in ADMIN_CALLS:  # root is an admin by id
        iid, outputs[sub] = await slash_text(fake, env.root, "admin", sub=sub, options=opts)
        assert fake.interactions[iid]["ephemeral"]
        if sub == "retrain":
            await env.core.wait_background()
    assert outputs["status"].startswith("Model: fake")
    assert "Started a learning cycle" in outputs["retrain"]
    assert outputs["adapters"] == "v0001 (active)"
    assert outputs["rollback"] == "Active adapter is now v0001."
    assert outputs["probe"] == "Added probe #1." and env.learning.probes == ["2+2 => 4"]
    # The retrain report was sent to the admin by DM.
    dm = fake.dm_channel_for(env.root)["id"]
    report = await fake.wait_for(lambda: fake.channel_messages(dm))
    assert "promoted v0001" in report[0]["content"]

    _, text = await slash_text(fake, env.carol, "admin", sub="adapters")  # admin by role
    assert text == "v0001 (active)"
    audit = await store.audit_log()
    assert {(a.actor, a.action) for a in audit if a.allowed} == {
        (env.root["id"], sub) for sub, _ in ADMIN_CALLS} | {(env.carol["id"], "adapters")}


async def test_admin_ingest_attachment(discord_env: DiscordEnv) -> None:
    env, fake, store = discord_env, discord_env.fake, discord_env.store
    await env.start(max_attachment_mb=0.01)

    async def ingest(user: dict[str, Any], name: str, data: bytes) -> str:
        att = fake.add_file(name, data)
        _, text = await slash_text(fake, user, "admin", sub="ingest", options=[
            P.option("attachment", att["id"], ATTACHMENT)],
            resolved={"attachments": {att["id"]: att}})
        return text

    assert await ingest(env.root, "notes.md", b"# Owls\nOwls are birds.") == \
        "added: notes.md (1 chunks)"
    by = f"discord:{env.root['id']}"
    assert env.kb.ingested == [("notes.md", b"# Owls\nOwls are birds.", by)]
    text = await ingest(env.root, "setup.exe", b"MZ")
    assert text.startswith("skipped: setup.exe (unsupported type .exe")
    text = await ingest(env.root, "huge.txt", b"x" * 20_000)
    assert text.startswith("skipped: huge.txt (too large")
    assert await ingest(env.bob, "notes.md", b"sneaky") == "/ingest is for admins only."
    assert len(env.kb.ingested) == 1
    audit = [(a.actor, a.action, a.allowed, a.result)
             for a in reversed(await store.audit_log())]
    assert [a[:3] for a in audit] == [(env.root["id"], "ingest", 1)] * 3 + [
        (env.bob["id"], "ingest", 0)]
    assert audit[1][3].startswith("skipped: setup.exe (unsupported type")
    assert audit[2][3].startswith("skipped: huge.txt (too large")  # refusals are audited too


async def test_admin_notifier_attaches_files(discord_env: DiscordEnv, tmp_path: Path) -> None:
    env, fake = discord_env, discord_env.fake
    await env.start()
    plot = tmp_path / "loss.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n fake plot")
    await env.core.notify_admins("Training run #1: promoted v0001.", [plot])
    dm = fake.dm_channel_for(env.root)["id"]
    (msg,) = fake.channel_messages(dm)
    assert msg["content"] == "Training run #1: promoted v0001."
    assert [a["filename"] for a in msg["attachments"]] == ["loss.png"]
    assert fake.files[msg["attachments"][0]["id"]] == plot.read_bytes()


async def test_commands_synced_only_when_changed(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    bot = await env.start()
    glob = rf"/applications/{fake.app_id}/commands"
    assert bot.synced and len(fake.find("PUT", glob)) == 1
    names = {c["name"] for c in fake.commands["global"]}
    assert names == {"ask", "new", "sources", "correct", "optout", "optin", "forget", "admin"}
    admin = next(c for c in fake.commands["global"] if c["name"] == "admin")
    assert {o["name"] for o in admin["options"]} == {"status", "retrain", "rollback", "adapters",
                                                     "ingest", "probe", "review"}
    assert all(c["description"] for c in fake.commands["global"])

    bot = await env.start(restart=True)
    assert not bot.synced and len(fake.find("PUT", glob)) == 1

    gid = int(fake.guild_id)
    bot = await env.start(restart=True, guild_ids=[gid])
    guild_route = rf"/applications/{fake.app_id}/guilds/{gid}/commands"
    assert bot.synced and len(fake.find("PUT", guild_route)) == 1
    bot = await env.start(restart=True, guild_ids=[gid])
    assert not bot.synced and len(fake.find("PUT", guild_route)) == 1
    # Guild-scoped commands still work after an unchanged start.
    _, text = await slash_text(fake, env.alice, "optout")
    assert "will not be used" in text


async def test_admin_menu_can_be_hidden_behind_a_permission(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake

    def shown_to() -> dict[str, Any]:
        return {c["name"]: c.get("default_member_permissions") for c in fake.commands["global"]}

    await env.start()
    assert shown_to()["admin"] is None and shown_to()["ask"] is None  # default: in every menu
    await env.start(restart=True, admin_menu_permission="manage_guild")
    assert int(shown_to()["admin"]) == discord.Permissions(manage_guild=True).value
    assert shown_to()["ask"] is None  # only /admin is hidden
    # hiding is cosmetic: the check in code still decides who may run it
    _, text = await slash_text(fake, env.bob, "admin", sub="status")
    assert text == "/status is for admins only."


async def test_command_error_is_reported_and_bot_keeps_running(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    env.allow_errors(r"slash command new failed")
    await env.start()
    real = env.core.command

    async def broken(inc: Incoming, name: str, args: str = "") -> CommandResult:
        if name == "new":
            raise RuntimeError("boom")
        return await real(inc, name, args)

    env.core.command = broken  # type: ignore[method-assign]
    _, text = await slash_text(fake, env.alice, "new")
    assert text == SORRY
    _, text = await slash_text(fake, env.alice, "optin")
    assert "may be used" in text


async def test_late_acknowledgement_is_rejected_by_the_fake(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    env.allow_errors(r"slash command optout failed")
    await env.start()
    fake.ack_deadline_s = 0.0  # every acknowledgement is now "too late"
    iid = await fake.slash(env.alice, "optout")
    await fake.wait_for(lambda: fake.find("POST", rf"/interactions/{iid}/.*/callback",
                                          status=404))
    assert fake.interactions[iid]["acked"] is None
    assert any("acknowledged after" in v for v in fake.violations)
    fake.violations.clear()
    fake.ack_deadline_s = 3.0
    _, text = await slash_text(fake, env.alice, "optin")  # still running
    assert "may be used" in text


async def test_startup_errors_are_clear(discord_env: DiscordEnv) -> None:
    env, fake = discord_env, discord_env.fake
    with pytest.raises(ConfigError, match="DISCORD_BOT_TOKEN"):
        async with DiscordBot(env.cfg.discord, env.core, "wrong-token"):
            pass
    fake.reject_privileged = True
    cfg = env.cfg.replace(discord__message_content=True)
    with pytest.raises(ConfigError, match="Message Content Intent"):
        async with DiscordBot(cfg.discord, env.core, fake.valid_token):
            pass
