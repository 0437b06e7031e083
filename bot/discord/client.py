"""The Discord adapter: a thin discord.py client that turns events into core calls.

:class:`NightOwlClient` is the ``commands.Bot`` subclass with the services injected (the core and
``[discord]``), as in discord.py's ``advanced_startup`` example; it is the :class:`DiscordPort`
the commands and buttons use. It decides only Discord things: who is an admin (who may talk
where is :mod:`bot.discord.access`, applied by the messages, the command tree and the buttons);
its messages mention nobody (``AllowedMentions.none()``: no user, role, @everyone or reply ping
from model output, on every send and edit); messages go to :class:`MessageHandler`, slash
commands are generated from the core's table in :mod:`bot.discord.commands`.
:class:`DiscordBot` runs it inside the caller's event loop (``async with``): login, connect,
wait until ready, answer what a restart left unanswered, and on exit let answers being streamed
finish before the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from bot.core import Attachment, ConfigError, Core, Incoming, NightOwlError
from bot.discord.buttons import KNOWN_COMPONENTS, is_known_component
from bot.discord.commands import SORRY, GatedTree, install, sync_commands, tell
from bot.discord.config import DiscordConfig
from bot.discord.format import split_message
from bot.discord.messages import MessageHandler
from bot.discord.port import PLATFORM
from bot.discord.render import RecoveryRenderer

log = logging.getLogger("nightowl.discord")

SHUTDOWN_GRACE_S = 10.0  # how long close() waits for answers still streaming


class NightOwlClient(commands.Bot):
    """discord.py client carrying NightOwl's services; implements :class:`DiscordPort`."""

    def __init__(self, settings: DiscordConfig, core: Core) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.message_content
        intents.presences = False
        intents.members = False
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, guild_ready_timeout=settings.guild_ready_timeout_s,
                         tree_cls=GatedTree, allowed_mentions=discord.AllowedMentions.none())
        self._settings = settings
        self._core = core
        self.ready = asyncio.Event()
        self.synced = False  # whether this start pushed the command tree to Discord
        self.inflight: set[asyncio.Task[Any]] = set()
        self.messages = MessageHandler(self, self)
        install(self.tree, self)

    # ---- the port ----------------------------------------------------------------------------
    @property
    def core(self) -> Core:
        return self._core

    @property
    def settings(self) -> DiscordConfig:
        return self._settings

    def is_admin(self, user: discord.abc.User) -> bool:
        if user.id in self._settings.admins:
            return True
        roles = getattr(user, "roles", None) or []
        return any(r.id in self._settings.admin_role_ids for r in roles)

    async def record_shown(self, answer_id: int, chat_id: int, message_ids: list[str]) -> None:
        await self._core.store.add_message_refs(answer_id, PLATFORM, str(chat_id), message_ids)

    def incoming(self, user: discord.abc.User, chat_id: int, text: str, *,
                 message: discord.Message | None = None,
                 attachments: tuple[Attachment, ...] = ()) -> Incoming:
        ref = message.reference.message_id if message and message.reference else None
        return Incoming(platform=PLATFORM, chat_id=str(chat_id), user_id=str(user.id),
                        display_name=user.display_name, text=text, is_admin=self.is_admin(user),
                        message_id=str(message.id) if message else None,
                        reply_to_message_id=str(ref) if ref else None, attachments=attachments)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Mark the current task as an answer in progress (shutdown lets it finish)."""
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.inflight.discard(task)

    async def report_error(self, what: str, *args: Any) -> None:
        """Log, tell the user in plain words when we know who asked, keep running."""
        log.error("unexpected error in Discord event %s", what, exc_info=sys.exc_info())
        message = next((a for a in args if isinstance(a, discord.Message)), None)
        if message is not None and not message.author.bot:
            with contextlib.suppress(discord.HTTPException):
                await message.channel.send(SORRY)
        interaction = next((a for a in args if isinstance(a, discord.Interaction)), None)
        if interaction is not None:
            with contextlib.suppress(discord.HTTPException):
                await tell(interaction, SORRY)

    # ---- events ------------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        """Runs during login: re-register persistent buttons, sync commands if they changed."""
        self.add_dynamic_items(*KNOWN_COMPONENTS)
        self.synced = await sync_commands(self, self.tree, self)

    async def on_ready(self) -> None:
        if self._settings.allowed_guilds:
            for guild in self.guilds:
                if guild.id not in self._settings.allowed_guilds:
                    log.warning("the bot is in guild %s (%s), which is not in [discord] "
                                "allowed_guilds: only allowed_users and admins are answered "
                                "there.", guild.name, guild.id)
        self.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.messages.on_message(message)

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

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        await self.report_error(event_method, *args)

    # ---- admin notifications -----------------------------------------------------------------
    async def notify_admins(self, text: str, files: list[Path]) -> None:
        """Direct-message every configured admin (used by Core for training reports)."""
        if not self.ready.is_set() or self.is_closed():
            return
        chunks = split_message(text)
        for uid in self._settings.admins:
            try:
                user = self.get_user(uid) or await self.fetch_user(uid)
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    attach = [discord.File(p) for p in files if p.exists()] if last else []
                    await user.send(chunk, files=attach)
            except discord.HTTPException as exc:
                log.warning("could not message Discord admin %s: %s", uid, exc)


class DiscordBot:
    """Runs NightOwl on Discord inside the caller's event loop (``async with DiscordBot(...)``)."""

    def __init__(self, settings: DiscordConfig, core: Core, token: str, *,
                 ready_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.core = core
        self.token = token
        self.ready_timeout_s = ready_timeout_s or settings.ready_timeout_s
        self.client = NightOwlClient(settings, core)
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[int] | None = None

    @property
    def synced(self) -> bool:
        """Whether this start pushed the command tree to Discord."""
        return self.client.synced

    async def __aenter__(self) -> DiscordBot:
        self._point_at_api()
        try:
            await self.client.login(self.token)
        except discord.LoginFailure as exc:
            await self.client.close()
            raise ConfigError(f"Discord rejected the bot token ({exc}). Put the token from the "
                              "Developer Portal (Bot > Reset Token) into the environment "
                              f"variable {self.settings.token_env}.") from exc
        except Exception:
            await self.client.close()
            raise
        self._task = asyncio.create_task(self.client.connect(reconnect=True),
                                         name="nightowl-discord")
        ready = asyncio.create_task(self.client.ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, timeout=self.ready_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            error = self._start_error()
            await self.close()
            raise error
        self.core.add_admin_notifier(self.client.notify_admins)
        self._recovery = asyncio.create_task(self._recover(), name="nightowl-discord-recovery")
        log.info("Discord ready as %s (%s guilds)", self.client.user, len(self.client.guilds))
        return self

    def _point_at_api(self) -> None:
        """Use a Discord-compatible API/gateway when configured ([discord] api_base_url)."""
        if self.settings.api_base_url:
            discord.http.Route.BASE = self.settings.api_base_url.rstrip("/")
        if self.settings.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.settings.gateway_url)

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

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _recover(self) -> int:
        """Answer (or apologise for) Discord messages stored but unanswered before a restart."""
        with self.client.answering():
            try:
                return await self.core.recover_pending(
                    PLATFORM, lambda chat_id, user_id: RecoveryRenderer(
                        self.client, int(chat_id), self.settings.stream_edit_interval_s,
                        self.client.record_shown))
            except Exception:
                log.exception("recovering unanswered Discord messages failed")
                return 0

    async def recovered(self) -> int:
        """How many leftover messages were handled at start (waits for the recovery)."""
        return await self._recovery if self._recovery is not None else 0

    async def close(self) -> None:
        inflight = {t for t in self.client.inflight if t is not asyncio.current_task()}
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
