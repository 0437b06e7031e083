"""Answers streamed into Discord as throttled edits of messages of at most 2000 characters.

:class:`DiscordRenderer` is the core's :class:`bot.core.messages.Renderer` for Discord: edits at
most once per ``interval_s`` while the answer grows (with a cursor), continuation messages past
2000 characters, surplus messages deleted when the final text is shorter, and the 👍/👎 buttons on
the last part. Subclasses say where a message goes: a channel or thread, a channel known only by
id (recovery after a restart), or a deferred slash command.

Invariant: the 👍/👎 buttons appear only after the store knows which messages show the answer
(``record``, before the edit or post that adds them), so a press can always be checked against
the store (:class:`bot.discord.buttons.FeedbackButton`); parts that did not exist yet are posted
without buttons first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import ui

from bot.core.messages import Reply
from bot.discord.buttons import feedback_view
from bot.discord.format import split_message

log = logging.getLogger("nightowl.discord")

CURSOR = " …"  # shown while an answer is still streaming


_Editable = Any  # discord.Message | InteractionMessage | WebhookMessage (all have edit/delete)
# Stores which messages show an answer: (answer id, chat id, Discord message ids).
Recorder = Callable[[int, int, list[str]], Awaitable[None]]


class DiscordRenderer:
    """Throttled edits, >2000-character continuation, buttons on the last part.

    Subclasses say how to post a message (``_post``) and how to show typing (``_typing_once``).
    Edits happen at most once per ``interval_s``; the final text is always rendered completely.
    """

    def __init__(self, interval_s: float, record: Recorder | None = None) -> None:
        self.interval_s = interval_s
        self.record = record
        self.chat_id = 0  # where the answer is shown (set by subclasses)
        self.sent: list[_Editable] = []
        self.shown: list[str] = []
        self._last = -float("inf")
        self._typing: asyncio.Task[None] | None = None
        self.failed = False

    async def _post(self, index: int, content: str, view: ui.View | None) -> _Editable:
        raise NotImplementedError

    async def _typing_once(self) -> None:
        return None

    async def _typing_loop(self) -> None:
        while True:
            try:
                await self._typing_once()
            except discord.HTTPException as exc:
                log.warning("typing indicator failed: %s", exc)
                return
            await asyncio.sleep(8)

    def stop_typing(self) -> None:
        """Stop the typing indicator (also called by the adapter if the core raised)."""
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None

    async def start(self) -> None:
        self._typing = asyncio.create_task(self._typing_loop())

    async def update(self, text: str) -> None:
        now = time.monotonic()
        if self.failed or now - self._last < self.interval_s or not text.strip():
            return
        self._last = now
        try:
            await self._show(split_message(text.rstrip() + CURSOR), None)
        except discord.HTTPException as exc:  # the final render tries again
            log.warning("streaming edit failed (%s); will render the final answer", exc)
        self._last = time.monotonic()

    def platform_message_ids(self) -> list[str]:
        """Discord ids of the messages showing the answer (replies to any of them find it)."""
        return [str(m.id) for m in self.sent if getattr(m, "id", None) is not None]

    async def finish(self, reply: Reply) -> None:
        self.stop_typing()
        view = feedback_view(reply.answer_id) if reply.feedback and reply.answer_id else None
        chunks = _parts(split_message(reply.text))
        if view is not None and self.record is not None:
            if len(chunks) > len(self.sent):  # new parts: post them first to learn their ids
                await self._show(chunks, None)
            ids = [str(m.id) for m in self.sent[:len(chunks)]]
            try:
                await self.record(reply.answer_id or 0, self.chat_id, ids)
            except Exception:  # the buttons are still shown; their presses will be refused
                log.exception("could not record the messages of answer %s", reply.answer_id)
        await self._show(chunks, view)

    async def _show(self, chunks: list[str], view: ui.View | None) -> None:
        chunks = _parts(chunks)
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            v = view if i == last else None
            if i < len(self.sent):
                if self.shown[i] != chunk or v is not None:
                    await self.sent[i].edit(content=chunk, **({"view": v} if v else {}))
                    self.shown[i] = chunk
            else:
                self.sent.append(await self._post(i, chunk, v))
                self.shown.append(chunk)
        while len(self.sent) > len(chunks):
            extra = self.sent.pop()
            self.shown.pop()
            try:
                await extra.delete()
            except discord.HTTPException as exc:
                log.warning("could not delete a surplus message: %s", exc)


def _parts(chunks: list[str]) -> list[str]:
    """The messages to show: the non-blank parts, at least one."""
    return [c for c in chunks if c.strip()] or ["…"]


class ChannelRenderer(DiscordRenderer):
    """Answers in a channel or thread; the first message replies to ``reference`` if given."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None,
                 interval_s: float, record: Recorder | None = None) -> None:
        super().__init__(interval_s, record)
        self.channel = channel
        self.reference = reference
        self.chat_id = int(getattr(channel, "id", 0) or 0)

    async def _typing_once(self) -> None:
        await self.channel.typing()

    async def _post(self, index: int, content: str, view: ui.View | None) -> _Editable:
        kwargs: dict[str, Any] = {"view": view} if view is not None else {}
        if index == 0 and self.reference is not None:
            kwargs["reference"] = self.reference
            kwargs["mention_author"] = False
        return await self.channel.send(content, **kwargs)


class RecoveryRenderer(ChannelRenderer):
    """Answers into a channel known only by id (recovery after a restart): resolved on use."""

    def __init__(self, client: discord.Client, channel_id: int, interval_s: float,
                 record: Recorder | None = None) -> None:
        super().__init__(_NoChannel(), None, interval_s, record)  # type: ignore[arg-type]
        self.client = client
        self.channel_id = self.chat_id = channel_id

    async def _resolve(self) -> None:
        if isinstance(self.channel, _NoChannel):
            found = self.client.get_channel(self.channel_id)
            if found is None:
                found = await self.client.fetch_channel(self.channel_id)
            self.channel = found  # type: ignore[assignment]

    async def _typing_once(self) -> None:
        await self._resolve()
        await super()._typing_once()

    async def _post(self, index: int, content: str, view: ui.View | None) -> _Editable:
        await self._resolve()
        return await super()._post(index, content, view)


class _NoChannel:
    """Placeholder until RecoveryRenderer resolves its channel."""

    async def typing(self) -> None:
        return None

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("channel not resolved")


class InteractionRenderer(DiscordRenderer):
    """Answers a deferred slash command: the original response, then followups."""

    def __init__(self, interaction: discord.Interaction[Any], interval_s: float,
                 ephemeral: bool = False, record: Recorder | None = None) -> None:
        super().__init__(interval_s, record)
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.chat_id = interaction.channel_id or 0

    async def start(self) -> None:
        return None  # the deferred "NightOwl is thinking…" already shows activity

    async def _post(self, index: int, content: str, view: ui.View | None) -> _Editable:
        if index == 0:
            kwargs: dict[str, Any] = {"view": view} if view is not None else {}
            return await self.interaction.edit_original_response(content=content, **kwargs)
        fkw: dict[str, Any] = {"view": view} if view is not None else {}
        return await self.interaction.followup.send(content, wait=True,
                                                    ephemeral=self.ephemeral, **fkw)
