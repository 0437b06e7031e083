"""The Discord adapter: a thin discord.py client that turns events into core calls.

It decides only Discord things — is a message addressed to the bot, is the sender an admin, where
to answer (reply, thread, interaction) and how to render. Conversations, commands and learning
live in :class:`bot.core.Core`. Slash commands are in :mod:`bot.discord_commands`, rendering and
the persistent buttons in :mod:`bot.discord_render`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import discord
import discord.gateway
import discord.http
from discord.ext import commands

from bot.config import Config
from bot.core import Core
from bot.discord_render import (
    KNOWN_COMPONENTS,
    ChannelRenderer,
    RecoveryRenderer,
    feedback_view,
    is_known_component,
    split_text,
)
from bot.errors import ConfigError, NightOwlError
from bot.messages import Attachment, Incoming

log = logging.getLogger("nightowl.discord")

SORRY = "Sorry, something went wrong on my side. Please try again in a moment."
MENTION_HELP = ("Hi! Ask me anything: mention me with your question, reply to one of my answers, "
                "or use /ask. /new starts a fresh conversation; type / to see all commands.")
# Types the knowledge base can read (rag extracts text from these).
# (kept equal to rag.extract.SUPPORTED by a test; the adapter does not import rag/).
SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf", ".docx",
                      ".json", ".jsonl")
CONTENT_HINT = ("I can only read messages that mention me here (the message-content intent is "
                "off). Mention me, or use /ask.")
SHUTDOWN_GRACE_S = 10.0  # how long close() waits for answers still streaming
_MENTION = re.compile(r"<@[!&]?(\d+)>")


def attachment_problem(name: str, size: int, limit_mb: float) -> str | None:
    """Why an attachment cannot be used, or None if it can."""
    limit = int(limit_mb * 1024 * 1024)
    if size > limit:
        return f"too large ({size / 1048576:.1f} MB; the limit is {limit_mb:g} MB)"
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return (f"unsupported type {suffix or '(no extension)'}; I can read "
                f"{', '.join(SUPPORTED_SUFFIXES)}")
    return None


class NightOwlClient(commands.Bot):
    """discord.py client whose events go to the owning :class:`DiscordBot`."""

    def __init__(self, owner: DiscordBot, intents: discord.Intents, guild_ready_timeout: float
                 ) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, guild_ready_timeout=guild_ready_timeout,
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False,
                                                                  replied_user=False))
        self.owner = owner

    async def setup_hook(self) -> None:
        await self.owner.setup_hook()

    async def on_ready(self) -> None:
        self.owner.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.owner.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        await self.owner.on_interaction(interaction)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        await self.owner.on_error(event_method, *args)


class DiscordBot:
    """Runs NightOwl on Discord inside the caller's event loop (``async with DiscordBot(...)``)."""

    KV_TREE_HASH = "discord:command_tree_hash"

    def __init__(self, cfg: Config, core: Core, token: str, *, ready_timeout_s: float | None = None
                 ) -> None:
        self.cfg = cfg
        self.dc = cfg.discord
        self.core = core
        self.token = token
        self.ready_timeout_s = ready_timeout_s or self.dc.ready_timeout_s
        intents = discord.Intents.default()
        intents.message_content = self.dc.message_content
        intents.presences = False
        intents.members = False
        self.client = NightOwlClient(self, intents, self.dc.guild_ready_timeout_s)
        self.ready = asyncio.Event()
        self.synced = False  # whether this start pushed the command tree to Discord
        self._task: asyncio.Task[None] | None = None
        self._thread_starters: dict[int, int] = {}
        self._warned: set[tuple[int, str]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._recovery: asyncio.Task[int] | None = None
        from bot.discord_commands import register_commands

        register_commands(self)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> DiscordBot:
        self._point_at_api()
        try:
            await self.client.login(self.token)
        except discord.LoginFailure as exc:
            await self.client.close()
            raise ConfigError(f"Discord rejected the bot token ({exc}). Put the token from the "
                              "Developer Portal (Bot > Reset Token) into the environment "
                              f"variable {self.dc.token_env}.") from exc
        except Exception:
            await self.client.close()
            raise
        self._task = asyncio.create_task(self.client.connect(reconnect=True),
                                         name="nightowl-discord")
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, timeout=self.ready_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self._abort(self._start_error())
        self.core.add_admin_notifier(self.notify_admins)
        self._recovery = asyncio.create_task(self._recover(), name="nightowl-discord-recovery")
        user = self.client.user
        log.info("Discord ready as %s (%s guilds)", user, len(self.client.guilds))
        return self

    def _point_at_api(self) -> None:
        """Use a Discord-compatible API/gateway when configured ([discord] api_base_url)."""
        import yarl

        if self.dc.api_base_url:
            discord.http.Route.BASE = self.dc.api_base_url.rstrip("/")
        if self.dc.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.dc.gateway_url)

    def _start_error(self) -> NightOwlError:
        task = self._task
        exc = task.exception() if task is not None and task.done() else None
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            return ConfigError("Discord refused the message-content intent. Enable 'Message "
                               "Content Intent' for the bot in the Developer Portal (Bot > "
                               "Privileged Gateway Intents) or set [discord] message_content = "
                               "false.")
        if exc is not None:
            return NightOwlError(f"Discord connection failed: {exc!r}. Check the network and "
                                 "the token.")
        return NightOwlError(f"Discord did not become ready within {self.ready_timeout_s:g} s. "
                             "Check the network connection to discord.com, or raise [discord] "
                             "ready_timeout_s.")

    async def _abort(self, error: NightOwlError) -> None:
        await self.close()
        raise error

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @contextlib.contextmanager
    def answering(self) -> Any:
        """Mark the current task as an answer in progress (close() lets it finish)."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            yield
        finally:
            self._inflight.discard(task)  # type: ignore[arg-type]

    async def _recover(self) -> int:
        """Answer (or apologise for) Discord messages stored but unanswered before a restart."""
        with self.answering():
            try:
                return await self.core.recover_pending(
                    "discord", lambda chat_id, user_id: RecoveryRenderer(
                        self.client, int(chat_id), self.dc.stream_edit_interval_s))
            except Exception:
                log.exception("recovering unanswered Discord messages failed")
                return 0

    async def recovered(self) -> int:
        """How many leftover messages were handled at start (waits for the recovery)."""
        return await self._recovery if self._recovery is not None else 0

    async def close(self) -> None:
        inflight = {t for t in self._inflight if t is not asyncio.current_task()}
        if inflight:  # let answers being streamed finish before the HTTP session closes
            await asyncio.wait(inflight, timeout=SHUTDOWN_GRACE_S)
        if not self.client.is_closed():
            await self.client.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception as exc:  # the reason was reported already (or on start)
                log.debug("Discord connection ended with %r", exc)
            self._task = None

    async def setup_hook(self) -> None:
        """Runs during login: re-register persistent buttons, sync commands if they changed."""
        self.client.add_dynamic_items(*KNOWN_COMPONENTS)
        from bot.discord_commands import sync_commands

        self.synced = await sync_commands(self)

    # ---- who and where -----------------------------------------------------------------------
    def is_admin(self, user: discord.abc.User) -> bool:
        if user.id in self.dc.admins:
            return True
        roles = getattr(user, "roles", None) or []
        return any(r.id in self.dc.admin_role_ids for r in roles)

    def channel_allowed(self, channel: Any) -> bool:
        if not self.dc.allowed_channels or isinstance(channel, discord.DMChannel):
            return True
        ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
        return bool(ids & set(self.dc.allowed_channels))

    def incoming(self, user: discord.abc.User, chat_id: int, text: str, *,
                 message: discord.Message | None = None,
                 attachments: tuple[Attachment, ...] = ()) -> Incoming:
        ref = message.reference.message_id if message and message.reference else None
        return Incoming(platform="discord", chat_id=str(chat_id), user_id=str(user.id),
                        display_name=user.display_name, text=text, is_admin=self.is_admin(user),
                        message_id=str(message.id) if message else None,
                        reply_to_message_id=str(ref) if ref else None, attachments=attachments)

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
        if key in self._warned:
            return
        self._warned.add(key)
        names = ", ".join(p.replace("_", " ").title() for p in missing)
        log.warning("cannot answer in #%s (%s): missing permission %s. Grant it to the bot's "
                    "role in the channel settings.", getattr(channel, "name", "?"),
                    getattr(channel, "id", "?"), names)

    async def _addressed(self, message: discord.Message) -> str | None:
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
                and await self._thread_starter(channel) == message.author.id:
            return "thread"
        return None

    async def _thread_starter(self, thread: discord.Thread) -> int | None:
        """Who asked the question a bot thread was made from (thread id = that message's id)."""
        if thread.id not in self._thread_starters:
            parent = thread.parent
            if not isinstance(parent, discord.TextChannel):
                return None
            try:
                starter = await parent.fetch_message(thread.id)
            except discord.HTTPException:
                return None
            self._thread_starters[thread.id] = starter.author.id
        return self._thread_starters[thread.id]

    def clean_text(self, message: discord.Message) -> str:
        me = self.client.user
        role = message.guild.self_role if message.guild else None
        ours = {str(me.id) if me else "", str(role.id) if role else ""}
        return _MENTION.sub(lambda m: "" if m.group(1) in ours else m.group(0),
                            message.content).strip()

    # ---- messages ----------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.client.user is None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        channel = message.channel
        if not self.channel_allowed(channel):
            return
        reason = await self._addressed(message)
        if reason is None:
            return
        thread_mode = (self.dc.reply_in_threads and isinstance(channel, discord.TextChannel))
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

    async def _answer(self, message: discord.Message, text: str, thread_mode: bool,
                      reason: str) -> None:
        notes = []
        for att in message.attachments:
            problem = attachment_problem(att.filename, att.size, self.dc.max_attachment_mb)
            if problem:
                notes.append(f"I can't use {att.filename}: {problem}.")
            else:
                notes.append(f"I don't read files in chat; an admin can add {att.filename} to "
                             "the knowledge base with /admin ingest.")
        if not text:
            hint = MENTION_HELP
            if reason in ("reply", "thread") and not self.dc.message_content:
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
            self._thread_starters[thread.id] = message.author.id
            channel, reference = thread, None
        chat_id = getattr(channel, "id", message.channel.id)
        renderer = ChannelRenderer(channel, reference, self.dc.stream_edit_interval_s)
        with self.answering():
            await self._handle(message, chat_id, text, renderer)

    async def _handle(self, message: discord.Message, chat_id: int, text: str,
                      renderer: ChannelRenderer) -> None:
        try:
            await self.core.handle(self.incoming(message.author, chat_id, text, message=message),
                                   renderer)
        finally:
            renderer.stop_typing()

    # ---- components and errors -----------------------------------------------------------------
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Acknowledge component clicks that no live button handles (old or foreign ids)."""
        if interaction.type != discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if is_known_component(custom_id):
            return
        log.info("ignoring unknown component %r", custom_id)
        if not interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.defer()

    async def on_feedback(self, interaction: discord.Interaction[Any], answer_id: int,
                          vote: str) -> None:
        inc = self.incoming(interaction.user, interaction.channel_id or 0, "")
        result = await self.core.feedback(inc, answer_id, 1 if vote == "up" else -1)
        if result.ok:
            await interaction.response.edit_message(view=feedback_view(answer_id, vote))
        else:
            await interaction.response.send_message(result.text, ephemeral=True)

    async def on_forget_choice(self, interaction: discord.Interaction[Any], user_id: int,
                               choice: str) -> None:
        if interaction.user.id != user_id:
            await interaction.response.send_message("This button belongs to someone else's "
                                                    "/forget.", ephemeral=True)
            return
        if choice != "yes":
            await interaction.response.edit_message(content="Cancelled. Nothing was deleted.",
                                                    view=None)
            return
        await interaction.response.defer()
        inc = self.incoming(interaction.user, interaction.channel_id or 0, "")
        result = await self.core.forget(inc)
        await interaction.edit_original_response(content=split_text(result.text)[0], view=None)

    async def on_error(self, event_method: str, *args: Any) -> None:
        """Log, tell the user in plain words when we know who asked, keep running."""
        log.error("unexpected error in Discord event %s", event_method, exc_info=sys.exc_info())
        message = next((a for a in args if isinstance(a, discord.Message)), None)
        if message is not None and not message.author.bot:
            with contextlib.suppress(discord.HTTPException):
                await message.channel.send(SORRY)
        interaction = next((a for a in args if isinstance(a, discord.Interaction)), None)
        if interaction is not None:
            from bot.discord_commands import tell

            with contextlib.suppress(discord.HTTPException):
                await tell(interaction, SORRY)

    # ---- admin notifications -------------------------------------------------------------------
    async def notify_admins(self, text: str, files: list[Path]) -> None:
        """Direct-message every configured admin (used by Core for training reports)."""
        if not self.ready.is_set() or self.client.is_closed():
            return
        chunks = split_text(text)
        for uid in self.dc.admins:
            try:
                user = self.client.get_user(uid) or await self.client.fetch_user(uid)
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    attach = [discord.File(p) for p in files if p.exists()] if last else []
                    await user.send(chunk, files=attach)
            except discord.HTTPException as exc:
                log.warning("could not message Discord admin %s: %s", uid, exc)
