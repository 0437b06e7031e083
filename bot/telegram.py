"""The Telegram adapter (python-telegram-bot 22): a thin layer between Bot API updates and Core.

It decides only Telegram things: is a message addressed to the bot, is the sender an admin or
allowed at all, how to render and stream. Everything else is :class:`bot.core.Core`.

Acknowledgement: PTB's updater confirms a batch of updates (``offset``) on its next getUpdates,
which it calls right after putting the batch into the application's queue. ``AckQueue.put``
therefore waits until the update's message is stored (the core calls ``Renderer.start`` right
after committing the user turn) or its handler finished, so Telegram re-delivers anything the
process did not store. Updates are handled concurrently; ``[telegram] ack_timeout_s`` bounds the
wait when the same user's previous answer still holds the core's per-user lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from types import TracebackType
from typing import Any

from telegram import BotCommand, BotCommandScopeChat, Message, Update
from telegram.error import Forbidden, InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.config import Config
from bot.core import ADMIN_COMMANDS, USER_COMMANDS, Core
from bot.errors import ConfigError, NightOwlError
from bot.messages import Attachment, CommandResult, Incoming
from bot.telegram_render import Sender, StreamRenderer, confirm_keyboard, feedback_keyboard
from bot.telegram_updates import AckingProcessor, AckQueue, split_command

log = logging.getLogger("nightowl.telegram")

PLATFORM = "telegram"
ALLOWED_UPDATES = ["message", "callback_query"]
USER_MENU = [("start", "what NightOwl does"), ("help", "how to use NightOwl"),
             ("ask", "ask a question (in groups)"), ("new", "start a fresh conversation"),
             ("sources", "sources of the last answer"),
             ("correct", "the right answer (reply to an answer)"),
             ("optout", "keep my conversations out of training"),
             ("optin", "allow my conversations in training again"),
             ("forget", "delete everything stored about me")]
ADMIN_MENU = [("status", "model, adapter, knowledge, queue, last training"),
              ("retrain", "run a learning cycle now"), ("rollback", "switch to an older adapter"),
              ("adapters", "list trained adapters"), ("ingest", "add a document (send or reply)"),
              ("probe", "regression probes: add | list | remove")]
MEDIA_REPLY = "I read text and documents — please send your question as text."
DOC_HINT = ("I read text messages. To add a document to my knowledge base, an admin sends it with "
            "/ingest as its caption.")
ERROR_REPLY = "Sorry, something went wrong on my side. Please try again in a moment."
MEDIA = (filters.Sticker.ALL | filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO
         | filters.VIDEO_NOTE | filters.ANIMATION | filters.LOCATION | filters.CONTACT)


class TelegramBot:
    """Runs the Telegram side of NightOwl on the caller's event loop (``async with``)."""

    def __init__(self, cfg: Config, core: Core, token: str, *, polling: bool = True) -> None:
        self.cfg = cfg
        self.tcfg = cfg.telegram
        self.core = core
        self.polling = polling
        t = self.tcfg
        self.queue = AckQueue(t.ack_timeout_s)
        self.app = (Application.builder().token(token).base_url(t.base_url)
                    .base_file_url(t.base_file_url)
                    .rate_limiter(AIORateLimiter(max_retries=3))
                    .update_queue(self.queue).concurrent_updates(AckingProcessor(self.queue))
                    .job_queue(None)
                    .connect_timeout(min(t.request_timeout_s, 10.0))
                    .read_timeout(t.request_timeout_s).write_timeout(t.request_timeout_s)
                    .pool_timeout(t.request_timeout_s)
                    .get_updates_read_timeout(t.request_timeout_s)
                    .get_updates_connect_timeout(min(t.request_timeout_s, 10.0))
                    .build())
        self.sender = Sender(self.app.bot, t.stream_edit_interval_s, t.group_edit_interval_s)
        self.sender.on_blocked = self._on_blocked
        self._recovery: asyncio.Task[int] | None = None
        self._register_handlers()

    async def _on_blocked(self, chat_id: int, blocked: bool) -> None:
        """Record in the store that a user blocked (or unblocked) the bot."""
        try:
            await self.core.mark_blocked(PLATFORM, str(chat_id), blocked)
        except Exception:
            log.exception("could not record that chat %s blocked the bot", chat_id)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> TelegramBot:
        try:
            await self.app.initialize()
        except InvalidToken as exc:
            raise ConfigError(f"Telegram rejected the bot token in ${self.tcfg.token_env} ({exc}). "
                              "Copy the token from @BotFather again.") from exc
        except NetworkError as exc:
            raise NightOwlError(f"cannot reach the Telegram Bot API at {self.tcfg.base_url} "
                                f"({exc}). Check the network or [telegram] base_url.") from exc
        try:
            await self._register_commands()
            await self.app.start()
            if self.polling and self.app.updater is not None:
                await self.app.updater.start_polling(
                    timeout=int(self.tcfg.poll_timeout_s), allowed_updates=ALLOWED_UPDATES,
                    error_callback=self._polling_error)
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
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()  # finishes updates already taken from the queue
        if self.queue.done_max is not None:  # confirm what was handled after the last poll
            try:
                await self.app.bot.get_updates(offset=self.queue.done_max + 1, timeout=0,
                                               allowed_updates=ALLOWED_UPDATES)
            except TelegramError as exc:
                log.warning("could not confirm the last updates (they may come again): %s", exc)
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
        users = [BotCommand(n, d) for n, d in USER_MENU]
        admins = users + [BotCommand(n, d) for n, d in ADMIN_MENU]
        await bot.set_my_commands(users)
        for admin in self.tcfg.admins:
            try:
                await bot.set_my_commands(admins, scope=BotCommandScopeChat(admin))
            except TelegramError as exc:  # the admin has not opened a chat with the bot yet
                log.warning("could not show admin commands to %s: %s", admin, exc)

    def _renderer_for(self, chat_id: str, user_id: str) -> StreamRenderer:
        return StreamRenderer(self.sender, int(chat_id))

    def _register_handlers(self) -> None:
        msg = filters.UpdateType.MESSAGE
        names = sorted(USER_COMMANDS | ADMIN_COMMANDS | {"ask"})
        self.app.add_handler(CommandHandler(names, self.on_command, filters=msg))
        self.app.add_handler(MessageHandler(msg & filters.Document.ALL, self.on_document))
        self.app.add_handler(MessageHandler(msg & filters.TEXT & ~filters.COMMAND, self.on_text))
        self.app.add_handler(MessageHandler(msg & filters.COMMAND, self.on_unknown_command))
        self.app.add_handler(MessageHandler(msg & MEDIA, self.on_media))
        self.app.add_handler(CallbackQueryHandler(self.on_callback))
        self.app.add_error_handler(self.on_error)

    # ---- admin notifications ------------------------------------------------------------------
    async def notify_admins(self, text: str, files: list[Any]) -> None:
        """Core's notifier: DM every configured admin the text and its files (e.g. a plot)."""
        for admin in self.tcfg.admins:
            if await self.sender.send_text(admin, text) is None:
                continue
            for path in files:
                await self.sender.send_file(admin, path)

    # ---- helpers ------------------------------------------------------------------------------
    def is_admin(self, user_id: int) -> bool:
        return user_id in self.tcfg.admins

    def allowed(self, user_id: int, chat_id: int) -> bool:
        """Both lists empty = everyone; else the sender or the chat must be listed."""
        t = self.tcfg
        if self.is_admin(user_id) or not (t.allowed_users or t.allowed_chats):
            return True
        return user_id in t.allowed_users or chat_id in t.allowed_chats

    def _is_to_bot(self, msg: Message | None) -> bool:
        return bool(msg and msg.from_user and msg.from_user.id == self.app.bot.id)

    def addressed_text(self, msg: Message) -> str | None:
        """The text meant for the bot, or None when a group message is not addressed to it."""
        text = msg.text or msg.caption or ""
        if msg.chat.type == "private":
            return text
        name = self.app.bot.username or ""
        mention = re.compile(rf"@{re.escape(name)}\b", re.I) if name else None
        entities = {**msg.parse_entities(["mention", "text_mention"]),
                    **msg.parse_caption_entities(["mention", "text_mention"])}
        mentioned = any(
            (e.type == "mention" and mention is not None and mention.fullmatch(s))
            or (e.type == "text_mention" and e.user is not None and e.user.id == self.app.bot.id)
            for e, s in entities.items())
        if not mentioned and not self._is_to_bot(msg.reply_to_message):
            return None
        if mention is not None:
            text = mention.sub("", text)
        return " ".join(text.split(" ")).strip()

    def incoming(self, update: Update, text: str,
                 attachments: tuple[Attachment, ...] = ()) -> Incoming:
        msg, user, chat = update.effective_message, update.effective_user, update.effective_chat
        assert user is not None and chat is not None
        reply = msg.reply_to_message if msg is not None else None
        return Incoming(platform=PLATFORM, chat_id=str(chat.id), user_id=str(user.id),
                        display_name=user.full_name, text=text, is_admin=self.is_admin(user.id),
                        message_id=str(msg.message_id) if msg is not None else None,
                        reply_to_message_id=str(reply.message_id) if reply else None,
                        attachments=attachments)

    async def _gate(self, update: Update) -> bool:
        """Common checks for a message: a real user, allowed here (refused politely in DMs)."""
        user, chat = update.effective_user, update.effective_chat
        if user is None or chat is None or user.is_bot:
            return False
        self.sender.unblock(chat.id)
        if self.allowed(user.id, chat.id):
            return True
        log.info("refused user %s in chat %s (not in allowed_users/allowed_chats)", user.id,
                 chat.id)
        if chat.type == "private":
            await self.sender.send_text(chat.id, "Sorry, this bot is private. Ask its owner for "
                                                 f"access (your user id is {user.id}).")
        return False

    def _reply_to(self, msg: Message) -> int | None:
        return None if msg.chat.type == "private" else msg.message_id

    async def answer(self, update: Update, text: str) -> None:
        """Stream the core's answer; acknowledge the update once the core stored the message."""
        msg = update.effective_message
        assert msg is not None
        renderer = StreamRenderer(self.sender, msg.chat_id, reply_to=self._reply_to(msg),
                                  on_start=functools.partial(self.queue.accept, update.update_id))
        await self.core.handle(self.incoming(update, text), renderer)

    async def send_result(self, msg: Message, result: CommandResult, user_id: int) -> None:
        markup = confirm_keyboard(result.confirm, user_id) if result.confirm else None
        await self.sender.send_text(msg.chat_id, result.text, reply_to=self._reply_to(msg),
                                    markup=markup)
        for path in result.files:
            await self.sender.send_file(msg.chat_id, path)

    async def _download(self, file_id: str) -> bytes:
        file = await self.app.bot.get_file(file_id)
        return bytes(await file.download_as_bytearray())

    async def ingest(self, update: Update, msg: Message, args: str) -> None:
        """/ingest with a document (as caption, or replying to one): getFile, then the core."""
        user = update.effective_user
        assert user is not None
        doc = msg.document or (msg.reply_to_message.document if msg.reply_to_message else None)
        attachments: tuple[Attachment, ...] = ()
        if doc is not None:
            name = doc.file_name or f"document-{doc.file_unique_id}"
            limit = int(self.tcfg.max_document_mb * 1024 * 1024)
            problem = ""
            if (doc.file_size or 0) > limit:  # getFile refuses these; the core says so (audited)
                problem = (f"too large: {doc.file_size:,} bytes; the limit for documents sent "
                           f"over Telegram is {self.tcfg.max_document_mb:g} MB")
            attachments = (Attachment(name=name, size=doc.file_size or 0, mime=doc.mime_type or "",
                                      fetch=functools.partial(self._download, doc.file_id),
                                      problem=problem),)
        self.queue.accept(update.update_id)  # ingesting may take a while; nothing to store
        result = await self.core.command(self.incoming(update, msg.caption or msg.text or "",
                                                       attachments), "ingest", args)
        await self.send_result(msg, result, user.id)

    # ---- handlers -----------------------------------------------------------------------------
    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Answer a text message: always in private chats, in groups only when addressed."""
        msg = update.effective_message
        if msg is None:
            return
        text = self.addressed_text(msg)
        if text is None or not await self._gate(update):
            return
        await self.answer(update, text)

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Run a slash command through the core (admin commands are checked and audited there)."""
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not msg.text or not await self._gate(update):
            return
        name, args = split_command(msg.text)
        if name == "ask":
            if not args:
                await self.sender.send_text(msg.chat_id, "Usage: /ask YOUR QUESTION",
                                            reply_to=self._reply_to(msg))
                return
            await self.answer(update, args)
            return
        if name == "ingest":
            await self.ingest(update, msg, args)
            return
        result = await self.core.command(self.incoming(update, msg.text), name, args)
        await self.send_result(msg, result, user.id)

    async def on_unknown_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Unknown commands: explained in private chats or when addressed to us, else ignored."""
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not msg.text:
            return
        name = self.app.bot.username or ""
        head = msg.text.split(maxsplit=1)[0]
        if msg.chat.type != "private" and not head.lower().endswith(f"@{name.lower()}"):
            return
        if not await self._gate(update):
            return
        cmd, args = split_command(msg.text)
        await self.send_result(msg, await self.core.command(self.incoming(update, msg.text), cmd,
                                                            args), user.id)

    async def on_document(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A document: ingested when its caption is /ingest, otherwise a hint how to add it."""
        msg = update.effective_message
        if msg is None:
            return
        caption = (msg.caption or "").strip()
        target = caption.split(maxsplit=1)[0].partition("@")[2].lower() if caption else ""
        if target and target != (self.app.bot.username or "").lower():
            return  # a command for another bot
        if caption.startswith("/"):
            name, args = split_command(caption)
            if name == "ingest" and await self._gate(update):
                await self.ingest(update, msg, args)
                return
        if self.addressed_text(msg) is None or not await self._gate(update):
            return
        await self.sender.send_text(msg.chat_id, DOC_HINT, reply_to=self._reply_to(msg))

    async def on_media(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Stickers, photos, voice...: answer a caption if there is one, else say what I read."""
        msg = update.effective_message
        if msg is None:
            return
        text = self.addressed_text(msg)
        if text is None or not await self._gate(update):
            return
        if text.strip():
            await self.answer(update, text)
        else:
            await self.sender.send_text(msg.chat_id, MEDIA_REPLY, reply_to=self._reply_to(msg))

    async def on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍/👎 and confirmation buttons; stale or forged data is answered, then ignored."""
        query = update.callback_query
        if query is None:
            return
        data, user, msg = query.data or "", query.from_user, query.message
        note = "This button is no longer valid."
        buttons = ({b.callback_data for row in msg.reply_markup.inline_keyboard for b in row}
                   if isinstance(msg, Message) and msg.reply_markup else set())
        if isinstance(msg, Message) and data in buttons and self.allowed(user.id, msg.chat_id):
            if data.startswith("fb:"):
                note = await self._feedback_press(update, msg, data)
            elif data.startswith("cf:"):
                note = await self._confirm_press(update, msg, data)
        else:
            log.info("ignored stale or forged button data %r from user %s", data[:64], user.id)
        try:
            await query.answer(note[:200])
        except TelegramError as exc:  # too old to answer: harmless
            log.debug("could not answer a button press: %s", exc)

    async def _feedback_press(self, update: Update, msg: Message, data: str) -> str:
        user = update.effective_user
        assert user is not None
        try:
            _, aid_s, value_s = data.split(":")
            aid, value = int(aid_s), int(value_s)
        except ValueError:
            return "This button is no longer valid."
        if value not in (1, -1):
            return "This button is no longer valid."
        asker = msg.reply_to_message.from_user if msg.reply_to_message else None
        if msg.chat.type != "private" and asker is not None and asker.id != user.id:
            return "Only the person who asked can rate this answer."
        result = await self.core.feedback(self.incoming(update, ""), aid, value)
        if result.ok:
            await self.sender.edit_markup(msg.chat_id, msg.message_id,
                                          feedback_keyboard(aid, value))
        return result.text

    async def _confirm_press(self, update: Update, msg: Message, data: str) -> str:
        user = update.effective_user
        assert user is not None
        parts = data.split(":")
        if len(parts) != 4 or parts[2] != str(user.id):
            return "Only the person who asked can confirm this."
        action, choice = parts[1], parts[3]
        if choice != "yes":
            text = "Cancelled. Nothing was deleted."
        elif action == "forget":
            text = (await self.core.forget(self.incoming(update, ""))).text
        else:
            return "This button is no longer valid."
        await self.sender.edit(msg.chat_id, msg.message_id, text, markup=None)
        return text

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log a failed update with its context, tell the user in plain words, keep running."""
        exc = context.error
        chat = update.effective_chat if isinstance(update, Update) else None
        user = update.effective_user if isinstance(update, Update) else None
        if isinstance(exc, Forbidden) and chat is not None:
            self.sender.mark_blocked(chat.id, exc)
            return
        log.error("handling Telegram update %s failed (chat %s, user %s)",
                  getattr(update, "update_id", "?"), chat.id if chat else "-",
                  user.id if user else "-", exc_info=exc)
        if chat is not None:
            await self.sender.send_text(chat.id, ERROR_REPLY)
