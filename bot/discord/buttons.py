"""The persistent buttons: 👍/👎 under an answer, the /forget confirmation, command buttons.

Each is a ``DynamicItem`` whose custom id carries its state, so it works after a restart; the
client registers :data:`KNOWN_COMPONENTS` once. A button owns its ``interaction_check`` (as in
discord.py's ``views/persistent.py``): every press first passes the allowlists
(:func:`bot.discord.access.admitted`); the /forget buttons answer only the user who asked; a
👍/👎 counts only on a message the store recorded as showing that answer (not on any message
that merely carries its custom id), else it is refused as stale. Who may rate is the core's
decision (the asker or an admin), so a 👍 pressed by another member is refused there. A command
button (a result's :class:`bot.core.Button`, e.g. ``/review approve c12``) runs its command through
``Core.command`` as the presser, who needs the same rights as to type it (checked and audited by the
core).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord
from discord import ui

from bot.core import Button
from bot.discord.access import admitted
from bot.discord.format import split_message
from bot.discord.port import PLATFORM, Interaction, port_of

log = logging.getLogger("nightowl.discord")

STALE = "This button is no longer valid."  # Telegram's words for a press it cannot trust


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
    async def from_custom_id(cls, interaction: Interaction, item: ui.Item[Any],
                             match: re.Match[str], /) -> FeedbackButton:
        return cls(int(match["aid"]), match["vote"])

    async def interaction_check(self, interaction: Interaction, /) -> bool:
        if not await admitted(interaction):
            return False
        if await self.on_its_answer(interaction):
            return True
        log.info("refused a 👍/👎 for answer %s pressed on message %s in channel %s, which does "
                 "not show it", self.answer_id, getattr(interaction.message, "id", None),
                 interaction.channel_id)
        await _refuse(interaction, STALE)
        return False

    async def on_its_answer(self, interaction: Interaction) -> bool:
        """Whether the pressed message shows this button's answer, as the store recorded it
        (channel and message id) before the buttons were shown; a deleted answer passes (the
        core says it is gone)."""
        message = interaction.message
        if message is None:
            return False
        store = port_of(interaction).core.store
        shown = await store.find_by_platform_id(PLATFORM, str(interaction.channel_id or 0),
                                                str(message.id))
        if shown is not None:
            return shown.id == self.answer_id
        return await store.get_message(self.answer_id) is None

    async def callback(self, interaction: Interaction) -> None:
        port = port_of(interaction)
        try:
            inc = port.incoming(interaction.user, interaction.channel_id or 0, "")
            result = await port.core.feedback(inc, self.answer_id, 1 if self.vote == "up" else -1)
            if result.ok:
                await interaction.response.edit_message(
                    view=feedback_view(self.answer_id, self.vote))
            else:
                await interaction.response.send_message(result.text, ephemeral=True)
        except Exception:
            await port.report_error("button " + self.custom_id, interaction)


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
    async def from_custom_id(cls, interaction: Interaction, item: ui.Item[Any],
                             match: re.Match[str], /) -> ForgetButton:
        return cls(int(match["uid"]), match["choice"])

    async def interaction_check(self, interaction: Interaction, /) -> bool:
        if not await admitted(interaction):
            return False
        if interaction.user.id == self.user_id:
            return True
        await _refuse(interaction, "This button belongs to someone else's /forget.")
        return False

    async def callback(self, interaction: Interaction) -> None:
        port = port_of(interaction)
        try:
            if self.choice != "yes":
                await interaction.response.edit_message(
                    content="Cancelled. Nothing was deleted.", view=None)
                return
            await interaction.response.defer()
            result = await port.core.forget(port.incoming(interaction.user,
                                                          interaction.channel_id or 0, ""))
            first = next(iter(split_message(result.text)), "…")
            await interaction.edit_original_response(content=first, view=None)
        except Exception:
            await port.report_error("button " + self.custom_id, interaction)


def forget_view(user_id: int) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(ForgetButton(user_id, "yes"))
    view.add_item(ForgetButton(user_id, "no"))
    return view


class CommandButton(ui.DynamicItem[ui.Button[Any]],
                    template=r"nightowl:cmd:(?P<name>[a-z]+):(?P<args>[a-z0-9 ]{1,80})"):
    """Runs ``/name args`` for the presser (see the module docstring); the answer is ephemeral."""

    def __init__(self, name: str, args: str, label: str = "", row: int | None = None) -> None:
        super().__init__(ui.Button(style=discord.ButtonStyle.secondary, label=label or args,
                                   custom_id=f"nightowl:cmd:{name}:{args}", row=row))
        self.name = name
        self.args = args

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: ui.Item[Any],
                             match: re.Match[str], /) -> CommandButton:
        return cls(match["name"], match["args"])

    async def interaction_check(self, interaction: Interaction, /) -> bool:
        return await admitted(interaction)

    async def callback(self, interaction: Interaction) -> None:
        port = port_of(interaction)
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            inc = port.incoming(interaction.user, interaction.channel_id or 0, "")
            result = await port.core.command(inc, self.name, self.args)
            first = next(iter(split_message(result.text)), "…")
            await interaction.followup.send(first, ephemeral=True)
        except Exception:
            await port.report_error("button " + self.custom_id, interaction)


async def _refuse(interaction: Interaction, text: str) -> None:
    try:
        await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not refuse a button press: %s", exc)


def command_view(rows: list[tuple[Button, ...]]) -> ui.View:
    """A result's buttons (at most 5 rows of 5, Discord's limit)."""
    view = ui.View(timeout=None)
    for i, row in enumerate(rows[:5]):
        for b in row[:5]:
            view.add_item(CommandButton(b.command, b.args, b.label, row=i))
    return view


KNOWN_COMPONENTS = (FeedbackButton, ForgetButton, CommandButton)


def is_known_component(custom_id: str) -> bool:
    return any(cls.__discord_ui_compiled_template__.fullmatch(custom_id)
               for cls in KNOWN_COMPONENTS)
