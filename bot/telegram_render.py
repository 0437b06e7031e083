"""Sending to Telegram without ever breaking a reply: pacing, fallbacks, streaming.

``Sender`` owns every outgoing message: one pacer per chat (a shared budget for all answers in
that chat), HTML with a plain-text fallback on parse errors, ``RetryAfter`` waited out, transient
network errors retried, and chats whose user blocked the bot (``Forbidden``) skipped for the rest
of the run. ``StreamRenderer`` is the :class:`bot.messages.Renderer` for one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.messages import Reply
from bot.telegram_format import split_text, to_html

log = logging.getLogger("nightowl.telegram")

TYPING_EVERY_S = 4.5
MAX_ATTEMPTS = 4
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def feedback_keyboard(answer_id: int, chosen: int | None = None) -> InlineKeyboardMarkup:
    """👍/👎 buttons carrying the answer id; the recorded choice is marked with ✅."""
    up = "✅ 👍" if chosen == 1 else "👍"
    down = "✅ 👎" if chosen == -1 else "👎"
    return InlineKeyboardMarkup([[InlineKeyboardButton(up, callback_data=f"fb:{answer_id}:1"),
                                  InlineKeyboardButton(down, callback_data=f"fb:{answer_id}:-1")]])


def confirm_keyboard(action: str, user_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("Yes, do it", callback_data=f"cf:{action}:{user_id}:yes"),
        InlineKeyboardButton("Cancel", callback_data=f"cf:{action}:{user_id}:no")]])


def _retry_after_s(exc: RetryAfter) -> float:
    ra = exc.retry_after
    return float(ra.total_seconds() if hasattr(ra, "total_seconds") else ra)


def _is_parse_error(exc: BadRequest) -> bool:
    text = str(exc).lower()
    return "parse entities" in text or "can't parse" in text or "unsupported start tag" in text


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in str(exc).lower()


class Pacer:
    """At most one message call per ``interval`` seconds in one chat, counted from completion."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def __aenter__(self) -> Pacer:
        await self.lock.acquire()
        delay = self.next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self.lock.release()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.next_at = max(self.next_at, time.monotonic() + self.interval)
        self.lock.release()

    def defer(self, seconds: float) -> None:
        self.next_at = max(self.next_at, time.monotonic() + seconds)


class Sender:
    """Every outgoing call goes through here. Never raises for Telegram errors."""

    def __init__(self, bot: Bot, interval_s: float, group_interval_s: float) -> None:
        self.bot = bot
        self.interval_s = interval_s
        self.group_interval_s = group_interval_s
        self.blocked: set[int] = set()
        self._pacers: dict[int, Pacer] = {}
        # called with (chat_id, blocked) so the core can record it; set by the adapter
        self.on_blocked: Callable[[int, bool], Coroutine[Any, Any, None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _report(self, chat_id: int, blocked: bool) -> None:
        if self.on_blocked is None or chat_id <= 0:  # only private chats are users
            return
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self.on_blocked(chat_id, blocked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pacer(self, chat_id: int) -> Pacer:
        if chat_id not in self._pacers:
            interval = self.interval_s if chat_id > 0 else self.group_interval_s
            self._pacers[chat_id] = Pacer(interval)
        return self._pacers[chat_id]

    def mark_blocked(self, chat_id: int, exc: BaseException | None = None) -> None:
        if chat_id not in self.blocked:
            log.warning("chat %s blocked the bot or is closed to it (%s); not sending to it again "
                        "in this run", chat_id, exc or "Forbidden")
            self._report(chat_id, True)
        self.blocked.add(chat_id)

    def unblock(self, chat_id: int) -> None:
        """The user wrote to us again, so they unblocked the bot."""
        if chat_id in self.blocked:
            self._report(chat_id, False)
        self.blocked.discard(chat_id)

    async def typing(self, chat_id: int) -> None:
        if chat_id in self.blocked:
            return
        try:
            await self.bot.send_chat_action(chat_id, ChatAction.TYPING)
        except Forbidden as exc:
            self.mark_blocked(chat_id, exc)
        except TelegramError as exc:
            log.debug("typing action failed in %s: %s", chat_id, exc)

    async def _call(self, chat_id: int, what: str, fn: Callable[[ParseMode | None], Any],
                    *, final: bool = True, paced: bool = True) -> Any:
        """Run one send/edit: HTML first, plain on a parse error; retries; None on failure.

        ``final=False`` (an intermediate streamed edit) gives up on RetryAfter instead of
        waiting: the pacer is pushed back and the next edit carries the newer text anyway.
        """
        if chat_id in self.blocked:
            return None
        mode: ParseMode | None = ParseMode.HTML
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                if paced:
                    async with self.pacer(chat_id):
                        return await fn(mode)
                return await fn(mode)
            except RetryAfter as exc:
                wait = _retry_after_s(exc)
                self.pacer(chat_id).defer(wait)
                if not final:
                    log.info("flood control in %s: skipping a streamed edit (%s s)", chat_id, wait)
                    return None
                log.info("flood control in %s: waiting %s s before %s", chat_id, wait, what)
                if not paced:
                    await asyncio.sleep(wait)
            except Forbidden as exc:
                self.mark_blocked(chat_id, exc)
                return None
            except BadRequest as exc:
                if _not_modified(exc):
                    return True
                if mode is not None and _is_parse_error(exc):
                    log.warning("Telegram could not parse the %s in %s (%s); resending as plain "
                                "text", what, chat_id, exc)
                    mode = None
                    continue
                log.warning("Telegram refused the %s in %s: %s", what, chat_id, exc)
                return None
            except NetworkError as exc:  # includes TimedOut and 5xx answers
                if attempt == MAX_ATTEMPTS or not final:
                    log.warning("network error on the %s in %s: %s", what, chat_id, exc)
                    return None
                await asyncio.sleep(0.5 * attempt)
        log.warning("gave up on the %s in %s after %s attempts", what, chat_id, MAX_ATTEMPTS)
        return None

    async def send(self, chat_id: int, text: str, *, reply_to: int | None = None,
                   markup: InlineKeyboardMarkup | None = None, final: bool = True
                   ) -> Message | None:
        """Send one message part (<= 4096 units). HTML, falling back to plain text."""
        params = (ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
                  if reply_to else None)

        async def fn(mode: ParseMode | None) -> Message:
            return await self.bot.send_message(
                chat_id, to_html(text) if mode else text, parse_mode=mode,
                reply_parameters=params, reply_markup=markup)

        result = await self._call(chat_id, "message", fn, final=final)
        return result if isinstance(result, Message) else None

    async def edit(self, chat_id: int, message_id: int, text: str, *,
                   markup: InlineKeyboardMarkup | None = None, final: bool = True) -> bool:
        async def fn(mode: ParseMode | None) -> Any:
            return await self.bot.edit_message_text(
                to_html(text) if mode else text, chat_id=chat_id, message_id=message_id,
                parse_mode=mode, reply_markup=markup)

        return await self._call(chat_id, "edit", fn, final=final) is not None

    async def delete(self, chat_id: int, message_id: int) -> bool:
        async def fn(mode: ParseMode | None) -> Any:
            return await self.bot.delete_message(chat_id, message_id)

        return await self._call(chat_id, "delete", fn, paced=False) is not None

    async def edit_markup(self, chat_id: int, message_id: int,
                          markup: InlineKeyboardMarkup | None) -> bool:
        async def fn(mode: ParseMode | None) -> Any:
            return await self.bot.edit_message_reply_markup(chat_id=chat_id,
                                                            message_id=message_id,
                                                            reply_markup=markup)

        return await self._call(chat_id, "keyboard edit", fn) is not None

    async def send_text(self, chat_id: int, text: str, *, reply_to: int | None = None,
                        markup: InlineKeyboardMarkup | None = None) -> Message | None:
        """Send a text of any length: split into parts; the keyboard goes on the last one."""
        parts = split_text(text) or ["(empty)"]
        last: Message | None = None
        for i, part in enumerate(parts):
            last = await self.send(chat_id, part, reply_to=reply_to if i == 0 else None,
                                   markup=markup if i == len(parts) - 1 else None)
            if last is None:
                return None
        return last

    async def send_file(self, chat_id: int, path: Path, caption: str = "") -> bool:
        async def fn(mode: ParseMode | None) -> Any:
            with path.open("rb") as fh:
                if path.suffix.lower() in PHOTO_SUFFIXES:
                    return await self.bot.send_photo(chat_id, fh, caption=caption or None)
                return await self.bot.send_document(chat_id, fh, filename=path.name,
                                                    caption=caption or None)

        try:
            return await self._call(chat_id, f"file {path.name}", fn) is not None
        except OSError as exc:
            log.warning("cannot read %s to send it: %s", path, exc)
            return False


class StreamRenderer:
    """Streams one answer into a chat: typing, first message early, paced edits, final parts."""

    def __init__(self, sender: Sender, chat_id: int, *, reply_to: int | None = None,
                 on_start: Callable[[], None] | None = None) -> None:
        self.sender = sender
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.on_start = on_start
        self.message_ids: list[int] = []
        self.shown: list[str] = []
        self.edits = 0
        self._latest = ""
        self._dirty = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The user's message is stored: acknowledge it, show typing until text appears."""
        if self.on_start is not None:
            self.on_start()
        self._typing = asyncio.create_task(self._typing_loop())

    async def _typing_loop(self) -> None:
        while not self.message_ids and not self._closing:
            await self.sender.typing(self.chat_id)
            await asyncio.sleep(TYPING_EVERY_S)

    async def update(self, text: str) -> None:
        self._latest = text
        if not text.strip():
            return
        self._dirty.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._dirty.wait()
            self._dirty.clear()
            if self._closing:
                return
            if not await self._sync(self._latest, None, final=False):
                return

    async def _sync(self, text: str, markup: InlineKeyboardMarkup | None, *, final: bool) -> bool:
        """Make the chat show ``text``: finished parts stay, the last part is edited or sent."""
        parts = split_text(text)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            want_markup = markup if last else None
            if i < len(self.message_ids):
                if part == self.shown[i] and not (final and last and want_markup is not None):
                    continue
                ok = await self.sender.edit(self.chat_id, self.message_ids[i], part,
                                            markup=want_markup, final=final)
                if ok:
                    self.edits += 1
                    self.shown[i] = part
                elif final and self.chat_id not in self.sender.blocked:
                    # the message vanished (deleted?) — send the final part afresh
                    msg = await self.sender.send(self.chat_id, part, markup=want_markup)
                    if msg is None:
                        return False
                    self.message_ids[i], self.shown[i] = msg.message_id, part
                continue
            msg = await self.sender.send(self.chat_id, part,
                                         reply_to=self.reply_to if i == 0 else None,
                                         markup=want_markup, final=True)
            if msg is None:
                return False
            self.message_ids.append(msg.message_id)
            self.shown.append(part)
        while final and len(self.message_ids) > max(len(parts), 1):  # the final text is shorter
            await self.sender.delete(self.chat_id, self.message_ids.pop())
            self.shown.pop()
        return True

    async def _stop_background(self) -> None:
        self._closing = True
        self._dirty.set()
        if self._flusher is not None:
            await self._flusher
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing

    def platform_message_ids(self) -> list[str]:
        """Telegram ids of the messages showing the answer (replies to any of them find it)."""
        return [str(i) for i in self.message_ids]

    async def finish(self, reply: Reply) -> None:
        """Render the complete answer; the 👍/👎 keyboard goes on its last message."""
        await self._stop_background()
        markup = (feedback_keyboard(reply.answer_id)
                  if reply.feedback and reply.answer_id is not None else None)
        await self._sync(reply.text, markup, final=True)
