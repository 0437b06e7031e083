"""What the bot does with each Telegram update: only Telegram decisions, then the core.

Is a message addressed to the bot (always in private chats; in groups a mention, a reply to the
bot, or a command), is the sender allowed (``allowed_users``/``allowed_chats``) or an admin, and
how the result is shown. Everything else is :class:`bot.core.Core`. An answer's update is
confirmed (:class:`Ledger`) as soon as the core stored the user's message or refused it; when
handling fails before the message is stored, the update is handled again, not lost. Admin
commands run in a group answer in the admin's private chat (the group sees only a note), like
Discord's ephemeral replies: status, adapters and probes are not for everyone in the group.
"""

from __future__ import annotations

import functools
import logging
import re

from telegram import Bot, Message, Update
from telegram.error import Forbidden, TelegramError
from telegram.ext import ContextTypes

from bot.core import Attachment, CommandResult, Core, Incoming, pseudonym
from bot.core.commands import ASK, BY_NAME
from bot.core.text import split_command
from bot.telegram.config import TelegramConfig
from bot.telegram.keyboards import (
    command_keyboard,
    confirm_keyboard,
    feedback_keyboard,
    parse_command,
    parse_confirm,
    parse_feedback,
    without_row,
)
from bot.telegram.sender import Sender
from bot.telegram.stream import TelegramRenderer
from bot.telegram.updates import Ledger

log = logging.getLogger("nightowl.telegram")

PLATFORM = "telegram"
MEDIA_REPLY = "I read text and documents — please send your question as text."
DOC_HINT = ("I read text messages. To add a document to my knowledge base, an admin sends it with "
            "/ingest as its caption.")
ERROR_REPLY = "Sorry, something went wrong on my side. Please try again in a moment."
STALE = "This button is no longer valid."
SENT_PRIVATELY = "📬 Sent you the result of /{name} in our private chat."
NO_PRIVATE_CHAT = ("I ran /{name}, but admin output goes only to a private chat and I cannot "
                   "message you yet: open a chat with @{bot}, press Start, then ask there.")


class UpdateHandlers:
    """The handlers :class:`bot.telegram.adapter.TelegramBot` registers with PTB."""

    def __init__(self, settings: TelegramConfig, core: Core, bot: Bot, sender: Sender,
                 ledger: Ledger) -> None:
        self.settings = settings
        self.core = core
        self.bot = bot
        self.sender = sender
        self.ledger = ledger

    # ---- who and what -------------------------------------------------------------------------
    def is_admin(self, user_id: int) -> bool:
        return user_id in self.settings.admins

    def allowed(self, user_id: int, chat_id: int) -> bool:
        """Both lists empty = everyone; else the sender or the chat must be listed."""
        t = self.settings
        if self.is_admin(user_id) or not (t.allowed_users or t.allowed_chats):
            return True
        return user_id in t.allowed_users or chat_id in t.allowed_chats

    def _is_to_bot(self, msg: Message | None) -> bool:
        return bool(msg and msg.from_user and msg.from_user.id == self.bot.id)

    def addressed_text(self, msg: Message) -> str | None:
        """The text meant for the bot, or None when a group message is not addressed to it."""
        text = msg.text or msg.caption or ""
        if msg.chat.type == "private":
            return text
        name = self.bot.username or ""
        mention = re.compile(rf"@{re.escape(name)}\b", re.I) if name else None
        entities = {**msg.parse_entities(["mention", "text_mention"]),
                    **msg.parse_caption_entities(["mention", "text_mention"])}
        mentioned = any(
            (e.type == "mention" and mention is not None and mention.fullmatch(s))
            or (e.type == "text_mention" and e.user is not None and e.user.id == self.bot.id)
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
        log.info("refused user %s in chat %s (not in allowed_users/allowed_chats)",
                 pseudonym(PLATFORM, user.id), pseudonym(PLATFORM, chat.id))
        if chat.type == "private":
            await self.sender.send_text(chat.id, "Sorry, this bot is private. Ask its owner for "
                                                 f"access (your user id is {user.id}).")
        return False

    def _reply_to(self, msg: Message) -> int | None:
        return None if msg.chat.type == "private" else msg.message_id

    # ---- doing it -----------------------------------------------------------------------------
    async def answer(self, update: Update, text: str) -> None:
        """Stream the core's answer; confirm the update once the core stored the message (or
        refused it: a refusal needs nothing stored and no turn of the chat's pacer)."""
        msg, user = update.effective_message, update.effective_user
        assert msg is not None and user is not None
        renderer = TelegramRenderer(self.sender, msg.chat_id, reply_to=self._reply_to(msg),
                                    on_start=functools.partial(self.ledger.accept,
                                                               update.update_id),
                                    notice_key=(msg.chat_id, user.id))
        self.ledger.storing(update.update_id)
        try:
            await self.core.handle(self.incoming(update, text), renderer)
        finally:
            await renderer.close()

    def private_output(self, msg: Message, name: str, user_id: int) -> bool:
        """An admin's admin command outside a private chat: its result goes to the admin's DM."""
        cmd = BY_NAME.get(name.lower())
        return (cmd is not None and cmd.admin and msg.chat.type != "private"
                and self.is_admin(user_id))

    async def send_result(self, msg: Message, result: CommandResult, user_id: int,
                          name: str = "") -> None:
        markup = (confirm_keyboard(result.confirm, user_id) if result.confirm else
                  command_keyboard(result.buttons) if result.buttons else None)
        if name and self.private_output(msg, name, user_id):
            sent = await self.sender.send_text(user_id, result.text, markup=markup)
            for path in result.files if sent is not None else []:
                await self.sender.send_file(user_id, path)
            note = (SENT_PRIVATELY if sent is not None else NO_PRIVATE_CHAT).format(
                name=name, bot=self.bot.username or "the bot")
            await self.sender.send_text(msg.chat_id, note, reply_to=self._reply_to(msg))
            return
        await self.sender.send_text(msg.chat_id, result.text, reply_to=self._reply_to(msg),
                                    markup=markup)
        for path in result.files:
            await self.sender.send_file(msg.chat_id, path)

    async def _download(self, file_id: str) -> bytes:
        file = await self.bot.get_file(file_id)
        return bytes(await file.download_as_bytearray())

    async def ingest(self, update: Update, msg: Message, args: str) -> None:
        """/ingest with a document (as caption, or replying to one): getFile, then the core."""
        user = update.effective_user
        assert user is not None
        doc = msg.document or (msg.reply_to_message.document if msg.reply_to_message else None)
        attachments: tuple[Attachment, ...] = ()
        if doc is not None:
            name = doc.file_name or f"document-{doc.file_unique_id}"
            limit = int(self.settings.max_document_mb * 1024 * 1024)
            problem = ""
            if (doc.file_size or 0) > limit:  # getFile refuses these; the core says so (audited)
                problem = (f"too large: {doc.file_size:,} bytes; the limit for documents sent "
                           f"over Telegram is {self.settings.max_document_mb:g} MB")
            attachments = (Attachment(name=name, size=doc.file_size or 0, mime=doc.mime_type or "",
                                      fetch=functools.partial(self._download, doc.file_id),
                                      problem=problem),)
        self.ledger.accept(update.update_id)  # ingesting may take a while; nothing to store
        result = await self.core.command(self.incoming(update, msg.caption or msg.text or "",
                                                       attachments), "ingest", args)
        await self.send_result(msg, result, user.id, "ingest")

    # ---- handlers -----------------------------------------------------------------------------
    async def _for_me(self, update: Update) -> tuple[Message, str] | None:
        """The message and its text when it is addressed to the bot by an allowed user."""
        msg = update.effective_message
        if msg is None:
            return None
        text = self.addressed_text(msg)
        if text is None or not await self._gate(update):
            return None
        return msg, text

    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Answer a text message: always in private chats, in groups only when addressed."""
        found = await self._for_me(update)
        if found is not None:
            await self.answer(update, found[1])

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Run a command of the table through the core (admin ones are checked there)."""
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not msg.text or not await self._gate(update):
            return
        name, args = split_command(msg.text)
        if name == ASK.name:
            if not args:
                await self.sender.send_text(msg.chat_id, f"Usage: /{ASK.name} YOUR QUESTION",
                                            reply_to=self._reply_to(msg))
                return
            await self.answer(update, args)
            return
        if name == "ingest":
            await self.ingest(update, msg, args)
            return
        result = await self.core.command(self.incoming(update, msg.text), name, args)
        await self.send_result(msg, result, user.id, name)

    async def on_unknown_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Unknown commands: explained in private chats or when addressed to us, else ignored."""
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not msg.text:
            return
        name = self.bot.username or ""
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
        if target and target != (self.bot.username or "").lower():
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
        found = await self._for_me(update)
        if found is None:
            return
        msg, text = found
        if text.strip():
            await self.answer(update, text)
        else:
            await self.sender.send_text(msg.chat_id, MEDIA_REPLY, reply_to=self._reply_to(msg))

    async def on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍/👎, confirmation and command buttons; stale or forged data (not on the message's
        own keyboard) is answered, then ignored."""
        query = update.callback_query
        if query is None:
            return
        data, user, msg = query.data or "", query.from_user, query.message
        note = STALE
        buttons = ({b.callback_data for row in msg.reply_markup.inline_keyboard for b in row}
                   if isinstance(msg, Message) and msg.reply_markup else set())
        if isinstance(msg, Message) and data in buttons and self.allowed(user.id, msg.chat_id):
            if data.startswith("fb:"):
                note = await self._feedback_press(update, msg, data)
            elif data.startswith("cf:"):
                note = await self._confirm_press(update, msg, data)
            elif data.startswith("cmd:"):
                note = await self._command_press(update, msg, data)
        else:
            log.info("ignored stale or forged button data %r from user %s", data[:64],
                     pseudonym(PLATFORM, user.id))
        try:
            await query.answer(note[:200])
        except TelegramError as exc:  # too old to answer: harmless
            log.debug("could not answer a button press: %s", exc)

    async def _feedback_press(self, update: Update, msg: Message, data: str) -> str:
        user = update.effective_user
        assert user is not None
        press = parse_feedback(data)
        if press is None:
            return STALE
        # the core decides who may rate (the asker or an admin), from the store: split, re-sent
        # and recovered answers carry no reply_to_message to judge by
        result = await self.core.feedback(self.incoming(update, ""), press.answer_id, press.value)
        if result.ok:
            await self.sender.edit_markup(msg.chat_id, msg.message_id,
                                          feedback_keyboard(press.answer_id, press.value))
        return result.text

    async def _command_press(self, update: Update, msg: Message, data: str) -> str:
        """A result's button (``/review approve c12``): the command, as if the presser typed it
        (the core checks admin rights and audits); a done row leaves the keyboard."""
        press = parse_command(data)
        if press is None:
            return STALE
        result = await self.core.command(self.incoming(update, ""), press.command, press.args)
        if result.ok and msg.reply_markup is not None:
            await self.sender.edit_markup(msg.chat_id, msg.message_id,
                                          without_row(msg.reply_markup, data))
        return result.text

    async def _confirm_press(self, update: Update, msg: Message, data: str) -> str:
        user = update.effective_user
        assert user is not None
        press = parse_confirm(data)
        if press is None or press.user_id != str(user.id):
            return "Only the person who asked can confirm this."
        if not press.yes:
            text = "Cancelled. Nothing was deleted."
        elif press.action == "forget":
            text = (await self.core.forget(self.incoming(update, ""))).text
        else:
            return STALE
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
        if isinstance(update, Update) and self.ledger.fail(update.update_id):
            # not stored: the update stays unconfirmed and is handled again, no apology yet
            log.warning("handling Telegram update %s failed before its message was stored; it "
                        "will be handled again: %s", update.update_id, exc)
            return
        log.error("handling Telegram update %s failed (chat %s, user %s)",
                  getattr(update, "update_id", "?"), pseudonym(PLATFORM, chat.id) if chat else "-",
                  pseudonym(PLATFORM, user.id) if user else "-", exc_info=exc)
        if chat is not None:
            await self.sender.send_text(chat.id, ERROR_REPLY)
