"""Sending to Telegram without ever breaking a reply: pacing, fallbacks, blocked chats.

``Sender`` owns every outgoing message: one pacer per chat (a shared budget for all answers in
that chat), HTML with a plain-text fallback on parse errors, ``RetryAfter`` waited out, transient
network errors retried, and chats whose user blocked the bot (``Forbidden``) skipped for the rest
of the run. Both per-chat memories are bounded: an idle pacer (no call waiting, its interval
over) and the oldest blocked marks are dropped first; a forgotten block costs one ``Forbidden``.
Notices (refusals) are never queued twice for one user in one chat: while one waits for the
pacer, another is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from telegram import Bot, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.core import pseudonym
from bot.core.bounded import LruDict
from bot.telegram.format import split_message, to_html

log = logging.getLogger("nightowl.telegram")


def _who(chat_id: int) -> str:
    """A chat in a log line: its pseudonym (a private chat's id is its user's id)."""
    return pseudonym("telegram", chat_id)

MAX_ATTEMPTS = 4
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MAX_CHATS = 10_000  # pacers and blocked marks remembered


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
        self.users = 0  # calls inside or waiting to enter

    def idle(self) -> bool:
        """Nobody is waiting and the interval is over: forgetting it changes nothing."""
        return self.users == 0 and self.next_at <= time.monotonic()

    async def __aenter__(self) -> Pacer:
        self.users += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self.users -= 1
            raise
        delay = self.next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self.lock.release()
                self.users -= 1
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.next_at = max(self.next_at, time.monotonic() + self.interval)
        self.lock.release()
        self.users -= 1

    def defer(self, seconds: float) -> None:
        self.next_at = max(self.next_at, time.monotonic() + seconds)


class Sender:
    """Every outgoing call goes through here. Never raises for Telegram errors."""

    def __init__(self, bot: Bot, interval_s: float, group_interval_s: float) -> None:
        self.bot = bot
        self.interval_s = interval_s
        self.group_interval_s = group_interval_s
        self.blocked: LruDict[int, bool] = LruDict(MAX_CHATS)
        self.pacers: LruDict[int, Pacer] = LruDict(MAX_CHATS, evictable=Pacer.idle)
        # called with (chat_id, blocked) so the core can record it; set by the adapter
        self.on_blocked: Callable[[int, bool], Coroutine[Any, Any, None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._notices: set[tuple[int, int]] = set()  # (chat, user) with a notice on its way

    def _report(self, chat_id: int, blocked: bool) -> None:
        if self.on_blocked is None or chat_id <= 0:  # only private chats are users
            return
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self.on_blocked(chat_id, blocked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pacer(self, chat_id: int) -> Pacer:
        interval = self.interval_s if chat_id > 0 else self.group_interval_s
        return self.pacers.get_or_create(chat_id, lambda: Pacer(interval))

    def mark_blocked(self, chat_id: int, exc: BaseException | None = None) -> None:
        if chat_id not in self.blocked:
            log.warning("chat %s blocked the bot or is closed to it (%s); not sending to it again "
                        "in this run", _who(chat_id), exc or "Forbidden")
            self._report(chat_id, True)
        self.blocked.put(chat_id, True)

    def unblock(self, chat_id: int) -> None:
        """The user wrote to us again, so they unblocked the bot."""
        if self.blocked.pop(chat_id) is not None:
            self._report(chat_id, False)

    async def typing(self, chat_id: int) -> None:
        if chat_id in self.blocked:
            return
        try:
            await self.bot.send_chat_action(chat_id, ChatAction.TYPING)
        except Forbidden as exc:
            self.mark_blocked(chat_id, exc)
        except TelegramError as exc:
            log.debug("typing action failed in %s: %s", _who(chat_id), exc)

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
                    log.info("flood control in %s: skipping a streamed edit (%s s)",
                             _who(chat_id), wait)
                    return None
                log.info("flood control in %s: waiting %s s before %s", _who(chat_id), wait, what)
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
                                "text", what, _who(chat_id), exc)
                    mode = None
                    continue
                log.warning("Telegram refused the %s in %s: %s", what, _who(chat_id), exc)
                return None
            except NetworkError as exc:  # includes TimedOut and 5xx answers
                if attempt == MAX_ATTEMPTS or not final:
                    log.warning("network error on the %s in %s: %s", what, _who(chat_id), exc)
                    return None
                await asyncio.sleep(0.5 * attempt)
        log.warning("gave up on the %s in %s after %s attempts", what, _who(chat_id),
                    MAX_ATTEMPTS)
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

    async def send_notice(self, key: tuple[int, int], chat_id: int, text: str, *,
                          reply_to: int | None = None) -> Message | None:
        """Send a refusal unless one for the same (chat, user) is still on its way."""
        if key in self._notices:
            log.info("dropped a repeated notice in chat %s: one is already on its way",
                     _who(chat_id))
            return None
        self._notices.add(key)
        try:
            return await self.send_text(chat_id, text, reply_to=reply_to)
        finally:
            self._notices.discard(key)

    async def send_text(self, chat_id: int, text: str, *, reply_to: int | None = None,
                        markup: InlineKeyboardMarkup | None = None) -> Message | None:
        """Send a text of any length: split into parts; the keyboard goes on the last one."""
        parts = split_message(text) or ["(empty)"]
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
