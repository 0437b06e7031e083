"""Discord messages: which ones are for the bot, and answering them where they were asked.

A message is considered only when :func:`bot.discord.access.refusal` allows its author there
(other guild messages are ignored; DMs need ``allow_dms``). It is for the bot in a DM, when it
mentions the bot (or its role), replies to one of its messages, or is written by the asker in a
thread the bot opened for their question. The answer goes to the channel as a reply, or into a
new thread (``reply_in_threads``); a channel where the bot lacks a permission is logged once, not
answered. The per-thread askers and the permission warnings are bounded (least recently used
dropped first; a dropped asker is fetched again).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import discord

from bot.core import pseudonym
from bot.core.bounded import LruDict
from bot.discord.access import NO_DMS, channel_ids, refusal
from bot.discord.attachments import attachment_problem
from bot.discord.port import PLATFORM, DiscordPort
from bot.discord.render import ChannelRenderer

log = logging.getLogger("nightowl.discord")

MENTION_HELP = ("Hi! Ask me anything: mention me with your question, reply to one of my answers, "
                "or use /ask. /new starts a fresh conversation; type / to see all commands.")
CONTENT_HINT = ("I can only read messages that mention me here (the message-content intent is "
                "off). Mention me, or use /ask.")
MAX_REMEMBERED = 10_000  # thread askers and permission warnings kept
_MENTION = re.compile(r"<@[!&]?(\d+)>")


class MessageHandler:
    """``on_message`` of the client: decides, then hands the text to the core."""

    def __init__(self, port: DiscordPort, client: discord.Client) -> None:
        self.port = port
        self.client = client
        self.settings = port.settings
        self.thread_starters: LruDict[int, int] = LruDict(MAX_REMEMBERED)
        self.warned: LruDict[tuple[int, str], bool] = LruDict(MAX_REMEMBERED)

    # ---- where -----------------------------------------------------------------------------
    def missing_permissions(self, channel: Any, *, thread: bool = False) -> list[str]:
        """Permissions the bot lacks to answer in ``channel`` (empty in DMs)."""
        guild = getattr(channel, "guild", None)
        if guild is None or guild.me is None:
            return []
        perms = channel.permissions_for(guild.me)
        need = ["view_channel", "read_message_history"]
        need.append("send_messages_in_threads" if isinstance(channel, discord.Thread) or thread
                    else "send_messages")
        if thread:
            need.append("create_public_threads")
        return [p for p in need if not getattr(perms, p)]

    def warn_permissions(self, channel: Any, missing: list[str]) -> None:
        key = (getattr(channel, "id", 0), ",".join(missing))
        if key in self.warned:
            return
        self.warned.put(key, True)
        names = ", ".join(p.replace("_", " ").title() for p in missing)
        log.warning("cannot answer in #%s (%s): missing permission %s. Grant it to the bot's "
                    "role in the channel settings.", getattr(channel, "name", "?"),
                    getattr(channel, "id", "?"), names)

    # ---- for the bot? ----------------------------------------------------------------------
    async def addressed(self, message: discord.Message) -> str | None:
        """Why this message is for the bot: "dm", "mention", "reply", "thread" — or None."""
        me = self.client.user
        assert me is not None
        if message.guild is None:
            return "dm"
        if any(u.id == me.id for u in message.mentions):
            return "mention"
        self_role = message.guild.self_role
        if self_role is not None and self_role.id in message.raw_role_mentions:
            return "mention"
        ref = message.reference
        if ref is not None and ref.message_id is not None:
            resolved = ref.resolved if isinstance(ref.resolved, discord.Message) else None
            if resolved is None:
                with contextlib.suppress(discord.HTTPException):
                    resolved = await message.channel.fetch_message(ref.message_id)
            if resolved is not None and resolved.author.id == me.id:
                return "reply"
        channel = message.channel
        if isinstance(channel, discord.Thread) and channel.owner_id == me.id \
                and await self.thread_starter(channel) == message.author.id:
            return "thread"
        return None

    async def thread_starter(self, thread: discord.Thread) -> int | None:
        """Who asked the question a bot thread was made from (thread id = that message's id)."""
        known = self.thread_starters.get(thread.id)
        if known is not None:
            return known
        parent = thread.parent
        if not isinstance(parent, discord.TextChannel):
            return None
        try:
            starter = await parent.fetch_message(thread.id)
        except discord.HTTPException:
            return None
        self.thread_starters.put(thread.id, starter.author.id)
        return starter.author.id

    def clean_text(self, message: discord.Message) -> str:
        me = self.client.user
        role = message.guild.self_role if message.guild else None
        ours = {str(me.id) if me else "", str(role.id) if role else ""}
        return _MENTION.sub(lambda m: "" if m.group(1) in ours else m.group(0),
                            message.content).strip()

    # ---- answering -------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.client.user is None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        channel = message.channel
        why = refusal(self.settings, user_id=message.author.id,
                      is_admin=self.port.is_admin(message.author),
                      guild_id=message.guild.id if message.guild else None,
                      channels=channel_ids(channel))
        if why is not None:  # decided before anything is fetched, stored or sent
            await self.refuse(message, why)
            return
        reason = await self.addressed(message)
        if reason is None:
            return
        thread_mode = (self.settings.reply_in_threads and isinstance(channel, discord.TextChannel))
        missing = self.missing_permissions(channel, thread=thread_mode)
        if thread_mode and missing == ["create_public_threads"]:
            self.warn_permissions(channel, missing)
            thread_mode, missing = False, []
        if missing:
            self.warn_permissions(channel, missing)
            return
        text = self.clean_text(message)
        try:
            await self._answer(message, text, thread_mode, reason)
        except discord.Forbidden as exc:
            self.warn_permissions(channel, [f"(Discord said: {exc.text or exc})"])

    async def refuse(self, message: discord.Message, why: str) -> None:
        """Guild messages and DMs while DMs are off: ignored; other DMs: told, as on Telegram."""
        if message.guild is not None:  # most are not even for the bot: no log line each
            log.debug("ignored user %s in guild %s: %s", pseudonym(PLATFORM, message.author.id),
                      message.guild.id, why.split(" (")[0])  # the text quotes the raw id
            return
        log.info("refused a DM from user %s (%s)", pseudonym(PLATFORM, message.author.id),
                 "allow_dms is off" if why == NO_DMS else "not in allowed_users")
        if why != NO_DMS:
            try:
                await message.channel.send(why)
            except discord.HTTPException as exc:
                log.warning("could not send a refusal: %s", exc)

    async def _answer(self, message: discord.Message, text: str, thread_mode: bool,
                      reason: str) -> None:
        notes = []
        for att in message.attachments:
            problem = attachment_problem(att.filename, att.size, self.settings.max_attachment_mb)
            if problem:
                notes.append(f"I can't use {att.filename}: {problem}.")
            else:
                notes.append(f"I don't read files in chat; an admin can add {att.filename} to "
                             "the knowledge base with /admin ingest.")
        if not text:
            hint = MENTION_HELP
            if reason in ("reply", "thread") and not self.settings.message_content:
                hint = CONTENT_HINT
            await message.reply("\n".join(notes) or hint, mention_author=False)
            return
        if notes:
            await message.reply("\n".join(notes), mention_author=False)
        channel: discord.abc.Messageable = message.channel
        reference: discord.Message | None = message
        if thread_mode:
            title = " ".join(text.split())[:90] or "NightOwl"
            thread = await message.create_thread(name=title, auto_archive_duration=1440)
            self.thread_starters.put(thread.id, message.author.id)
            channel, reference = thread, None
        chat_id = getattr(channel, "id", message.channel.id)
        renderer = ChannelRenderer(channel, reference, self.settings.stream_edit_interval_s,
                                   self.port.record_shown)
        with self.port.answering():
            try:
                await self.port.core.handle(
                    self.port.incoming(message.author, chat_id, text, message=message), renderer)
            finally:
                renderer.stop_typing()
