"""One answer streamed into a Telegram chat: typing, the first message early, paced edits.

:class:`TelegramRenderer` is the core's :class:`bot.core.messages.Renderer` for Telegram. Edits
go through the :class:`Sender` (so they share the chat's pace); the parts of the growing text are
those of ``split_message``, stable as the text grows, so a finished part is never edited again.
The final render always shows the complete answer, with the 👍/👎 keyboard on its last part.
A reply that comes without ``start`` is a refusal (rate limit, "please wait", moderation): the
update is confirmed at once, and while an earlier notice for the same user and chat still waits
for the chat's pacer, the new one is dropped (a burst gets a notice, not a hundred).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from telegram import InlineKeyboardMarkup

from bot.core.messages import Reply
from bot.telegram.format import split_message
from bot.telegram.keyboards import feedback_keyboard
from bot.telegram.sender import Sender

TYPING_EVERY_S = 4.5


class TelegramRenderer:
    """Streams one answer into a chat: typing, first message early, paced edits, final parts."""

    def __init__(self, sender: Sender, chat_id: int, *, reply_to: int | None = None,
                 on_start: Callable[[], None] | None = None,
                 notice_key: tuple[int, int] | None = None) -> None:
        self.sender = sender
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.on_start = on_start
        self.notice_key = notice_key
        self.started = False
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
        self.started = True
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
        parts = split_message(text)
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

    async def close(self) -> None:
        """Stop typing and the edit loop (the core failed before ``finish``); idempotent."""
        await self._stop_background()

    async def finish(self, reply: Reply) -> None:
        """Render the complete answer; the 👍/👎 keyboard goes on its last message."""
        if not self.started and self.on_start is not None:  # a refusal: nothing to store
            self.on_start()
            if self.notice_key is not None and not self.message_ids:
                await self.sender.send_notice(self.notice_key, self.chat_id, reply.text,
                                              reply_to=self.reply_to)
                return
        await self._stop_background()
        markup = (feedback_keyboard(reply.answer_id)
                  if reply.feedback and reply.answer_id is not None else None)
        await self._sync(reply.text, markup, final=True)
