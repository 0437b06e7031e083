"""Rendering NightOwl answers on Discord: splitting, streamed edits, and the persistent buttons.

Everything here is platform plumbing only; the answers come from :class:`bot.core.Core`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import ui

from bot.messages import Reply

if TYPE_CHECKING:
    from bot.discord_bot import DiscordBot

log = logging.getLogger("nightowl.discord")

LIMIT = 2000  # Discord's maximum characters per message
CURSOR = " …"  # shown while an answer is still streaming
_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)\s")


def split_text(text: str, limit: int = LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters.

    Cuts at the last paragraph break in the window, else at a line break, else after a sentence,
    else at a space, else hard. Never returns an empty list (an empty text gives ``[""]``).
    """
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        floor = limit // 3
        cut = window.rfind("\n\n", floor, limit)
        if cut < 0:
            cut = window.rfind("\n", floor, limit)
        if cut < 0:
            ends = [m.end() for m in _SENTENCE_END.finditer(window) if floor <= m.end() <= limit]
            cut = ends[-1] if ends else -1
        if cut < 0:
            cut = window.rfind(" ", floor, limit)
        if cut <= 0:
            cut = limit
        chunk = rest[:cut].rstrip()
        chunks.append(chunk if chunk else rest[:limit])
        rest = rest[cut:].lstrip() if chunk else rest[limit:]
    chunks.append(rest)
    return chunks


# ---- persistent components ---------------------------------------------------------------------
def _owner(interaction: discord.Interaction[Any]) -> DiscordBot:
    return interaction.client.owner  # type: ignore[attr-defined,no-any-return]


class FeedbackButton(ui.DynamicItem[ui.Button[Any]],
                     template=r"nightowl:fb:(?P<aid>[0-9]+):(?P<vote>up|down)"):
    """👍/👎 on an answer. The custom id carries the answer id, so it works after a restart."""

    def __init__(self, answer_id: int, vote: str, chosen: str | None = None) -> None:
        style = discord.ButtonStyle.secondary
        if chosen == vote:
            style = discord.ButtonStyle.success if vote == "up" else discord.ButtonStyle.danger
        super().__init__(ui.Button(style=style, emoji="👍" if vote == "up" else "👎",
                                   custom_id=f"nightowl:fb:{answer_id}:{vote}"))
        self.answer_id = answer_id
        self.vote = vote

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: ui.Item[Any],
                             match: re.Match[str], /) -> FeedbackButton:
        return cls(int(match["aid"]), match["vote"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        owner = _owner(interaction)
        try:
            await owner.on_feedback(interaction, self.answer_id, self.vote)
        except Exception:
            await owner.on_error("button " + self.custom_id, interaction)


def feedback_view(answer_id: int, chosen: str | None = None) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(FeedbackButton(answer_id, "up", chosen))
    view.add_item(FeedbackButton(answer_id, "down", chosen))
    return view


class ForgetButton(ui.DynamicItem[ui.Button[Any]],
                   template=r"nightowl:forget:(?P<uid>[0-9]+):(?P<choice>yes|no)"):
    """The /forget confirmation; only the user who asked can press it."""

    def __init__(self, user_id: int, choice: str) -> None:
        super().__init__(ui.Button(
            style=discord.ButtonStyle.danger if choice == "yes" else discord.ButtonStyle.secondary,
            label="Yes, delete everything" if choice == "yes" else "Cancel",
            custom_id=f"nightowl:forget:{user_id}:{choice}"))
        self.user_id = user_id
        self.choice = choice

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: ui.Item[Any],
                             match: re.Match[str], /) -> ForgetButton:
        return cls(int(match["uid"]), match["choice"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        owner = _owner(interaction)
        try:
            await owner.on_forget_choice(interaction, self.user_id, self.choice)
        except Exception:
            await owner.on_error("button " + self.custom_id, interaction)


def forget_view(user_id: int) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(ForgetButton(user_id, "yes"))
    view.add_item(ForgetButton(user_id, "no"))
    return view


KNOWN_COMPONENTS = (FeedbackButton, ForgetButton)


def is_known_component(custom_id: str) -> bool:
    return any(cls.__discord_ui_compiled_template__.fullmatch(custom_id)
               for cls in KNOWN_COMPONENTS)


# ---- streaming renderers -----------------------------------------------------------------------
_Editable = Any  # discord.Message | InteractionMessage | WebhookMessage (all have edit/delete)


class StreamRenderer:
    """Implements bot.messages.Renderer: throttled edits, >2000-char continuation, buttons.

    Subclasses say how to post a message (``_post``) and how to show typing (``_typing``).
    Edits happen at most once per ``interval_s``; the final text is always rendered completely.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
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
            await self._show(split_text(text.rstrip() + CURSOR), None)
        except discord.HTTPException as exc:  # the final render tries again
            log.warning("streaming edit failed (%s); will render the final answer", exc)
        self._last = time.monotonic()

    def platform_message_ids(self) -> list[str]:
        """Discord ids of the messages showing the answer (replies to any of them find it)."""
        return [str(m.id) for m in self.sent if getattr(m, "id", None) is not None]

    async def finish(self, reply: Reply) -> None:
        self.stop_typing()
        view = feedback_view(reply.answer_id) if reply.feedback and reply.answer_id else None
        await self._show(split_text(reply.text), view)

    async def _show(self, chunks: list[str], view: ui.View | None) -> None:
        chunks = [c for c in chunks if c.strip()] or ["…"]
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


class ChannelRenderer(StreamRenderer):
    """Answers in a channel or thread; the first message replies to ``reference`` if given."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None,
                 interval_s: float) -> None:
        super().__init__(interval_s)
        self.channel = channel
        self.reference = reference

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

    def __init__(self, client: discord.Client, channel_id: int, interval_s: float) -> None:
        super().__init__(_NoChannel(), None, interval_s)  # type: ignore[arg-type]
        self.client = client
        self.channel_id = channel_id

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


class InteractionRenderer(StreamRenderer):
    """Answers a deferred slash command: the original response, then followups."""

    def __init__(self, interaction: discord.Interaction[Any], interval_s: float,
                 ephemeral: bool = False) -> None:
        super().__init__(interval_s)
        self.interaction = interaction
        self.ephemeral = ephemeral

    async def start(self) -> None:
        return None  # the deferred "NightOwl is thinking…" already shows activity

    async def _post(self, index: int, content: str, view: ui.View | None) -> _Editable:
        if index == 0:
            kwargs: dict[str, Any] = {"view": view} if view is not None else {}
            return await self.interaction.edit_original_response(content=content, **kwargs)
        fkw: dict[str, Any] = {"view": view} if view is not None else {}
        return await self.interaction.followup.send(content, wait=True,
                                                    ephemeral=self.ephemeral, **fkw)
