"""The Telegram adapter: runs python-telegram-bot on the caller's event loop (``async with``).

``TelegramBot`` builds the PTB application, registers :class:`UpdateHandlers` for the commands of
the core's table (plus ``/ask``), publishes the command menus generated from that table (users';
admins' private chats also list the admin commands), and answers messages left unanswered by a
restart. PTB's ``run_polling`` is never used: it owns the loop, which Discord shares.

Acknowledgement (:mod:`bot.telegram.updates`): our :class:`Poller` replaces PTB's Updater. It
hands updates to the application without waiting for any handler and confirms to Telegram
(the getUpdates ``offset``) only the updates that are settled: their message is stored (the
core calls ``Renderer.start`` right after committing the user turn), or they needed no storing.
A handler that failed before storing leaves its update unconfirmed, so it comes again. One
user's burst or follow-ups (waiting on the core's per-user lock) delay no one else.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType

from telegram import BotCommand, BotCommandScopeChat
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bot.core import ConfigError, Core, NightOwlError, pseudonym
from bot.core import commands as table
from bot.core.commands import ASK, TELEGRAM, in_menu
from bot.telegram.config import TelegramConfig
from bot.telegram.handlers import PLATFORM, UpdateHandlers
from bot.telegram.sender import Sender
from bot.telegram.stream import TelegramRenderer
from bot.telegram.updates import AckingProcessor, Ledger, Poller

log = logging.getLogger("nightowl.telegram")

ALLOWED_UPDATES = ["message", "callback_query"]
MEDIA = (filters.Sticker.ALL | filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO
         | filters.VIDEO_NOTE | filters.ANIMATION | filters.LOCATION | filters.CONTACT)


def command_names() -> list[str]:
    """Every command a CommandHandler answers: the core's table and /ask."""
    return sorted({c.name for c in table.COMMANDS} | {ASK.name})


def menus() -> tuple[list[BotCommand], list[BotCommand]]:
    """The command menus (setMyCommands) generated from the table: everyone's, admins'."""
    users = [BotCommand(ASK.name, ASK.help)]
    users += [BotCommand(c.name, c.help) for c in in_menu(TELEGRAM, admin=False)]
    admins = users + [BotCommand(c.name, c.help) for c in in_menu(TELEGRAM, admin=True)]
    return users, admins


class TelegramBot:
    """Runs the Telegram side of NightOwl on the caller's event loop (``async with``)."""

    def __init__(self, settings: TelegramConfig, core: Core, token: str, *,
                 polling: bool = True) -> None:
        self.settings = t = settings
        self.core = core
        self.polling = polling
        self.ledger = Ledger(t.ack_timeout_s)
        self.app = (Application.builder().token(token).base_url(t.base_url)
                    .base_file_url(t.base_file_url)
                    .rate_limiter(AIORateLimiter(max_retries=3))
                    .updater(None).concurrent_updates(AckingProcessor(self.ledger))
                    .job_queue(None)
                    .connect_timeout(min(t.request_timeout_s, 10.0))
                    .read_timeout(t.request_timeout_s).write_timeout(t.request_timeout_s)
                    .pool_timeout(t.request_timeout_s)
                    .get_updates_read_timeout(t.request_timeout_s)
                    .get_updates_connect_timeout(min(t.request_timeout_s, 10.0))
                    .build())
        self.sender = Sender(self.app.bot, t.stream_edit_interval_s, t.group_edit_interval_s)
        self.sender.on_blocked = self._on_blocked
        self.handlers = UpdateHandlers(t, core, self.app.bot, self.sender, self.ledger)
        self.poller = Poller(self.app.bot, self.ledger, self.app.update_queue,
                             timeout_s=t.poll_timeout_s, allowed_updates=ALLOWED_UPDATES,
                             on_error=self._polling_error)
        self._polling = False
        self._recovery: asyncio.Task[int] | None = None
        self._register_handlers()

    async def _on_blocked(self, chat_id: int, blocked: bool) -> None:
        """Record in the store that a user blocked (or unblocked) the bot."""
        try:
            await self.core.mark_blocked(PLATFORM, str(chat_id), blocked)
        except Exception:
            log.exception("could not record that chat %s blocked the bot",
                          pseudonym(PLATFORM, chat_id))

    def _register_handlers(self) -> None:
        h, msg = self.handlers, filters.UpdateType.MESSAGE
        self.app.add_handler(CommandHandler(command_names(), h.on_command, filters=msg))
        self.app.add_handler(MessageHandler(msg & filters.Document.ALL, h.on_document))
        self.app.add_handler(MessageHandler(msg & filters.TEXT & ~filters.COMMAND, h.on_text))
        self.app.add_handler(MessageHandler(msg & filters.COMMAND, h.on_unknown_command))
        self.app.add_handler(MessageHandler(msg & MEDIA, h.on_media))
        self.app.add_handler(CallbackQueryHandler(h.on_callback))
        self.app.add_error_handler(h.on_error)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> TelegramBot:
        try:
            await self.app.initialize()
        except InvalidToken as exc:
            raise ConfigError(f"Telegram rejected the bot token in ${self.settings.token_env} "
                              f"({exc}). Copy the token from @BotFather again.") from exc
        except NetworkError as exc:
            raise NightOwlError(f"cannot reach the Telegram Bot API at {self.settings.base_url} "
                                f"({exc}). Check the network or [telegram] base_url.") from exc
        try:
            await self._register_commands()
            await self.app.start()
            if self.polling:
                await self.poller.start()
                self._polling = True
        except BaseException:
            await self._shutdown()
            raise
        self.core.add_admin_notifier(self.notify_admins)
        self._recovery = asyncio.create_task(
            self.core.recover_pending(PLATFORM, self._renderer_for))
        log.info("Telegram bot @%s is running", self.app.bot.username)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._recovery is not None:
            try:
                await self._recovery
            except Exception:
                log.exception("answering messages left from before the restart failed")
            self._recovery = None
        await self.poller.stop()
        if self.app.running:
            await self.app.stop()  # finishes the updates already handed to the application
        if self._polling:  # confirm what was settled after the last poll
            await self.poller.confirm()
            self._polling = False
        await self.app.shutdown()

    async def recovered(self) -> int:
        """Wait until messages left unanswered before a restart are handled; how many."""
        task, self._recovery = self._recovery, None
        return await task if task is not None else 0

    def _polling_error(self, exc: TelegramError) -> None:
        log.warning("polling Telegram failed (will retry): %s", exc)

    async def _register_commands(self) -> None:
        """The user menu for everyone; admins' private chats also list the admin commands."""
        bot = self.app.bot
        users, admins = menus()
        await bot.set_my_commands(users)
        for admin in self.settings.admins:
            try:
                await bot.set_my_commands(admins, scope=BotCommandScopeChat(admin))
            except TelegramError as exc:  # the admin has not opened a chat with the bot yet
                log.warning("could not show admin commands to %s: %s", admin, exc)

    def _renderer_for(self, chat_id: str, user_id: str) -> TelegramRenderer:
        return TelegramRenderer(self.sender, int(chat_id))

    # ---- admin notifications ------------------------------------------------------------------
    async def notify_admins(self, text: str, files: list[Path]) -> None:
        """Core's notifier: DM every configured admin the text and its files (e.g. a plot)."""
        for admin in self.settings.admins:
            if await self.sender.send_text(admin, text) is None:
                continue
            for path in files:
                await self.sender.send_file(admin, path)
