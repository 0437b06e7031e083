"""Who may use the bot, and where: one rule for messages, slash commands and buttons.

:func:`refusal` decides from ``[discord]`` alone (see :mod:`bot.discord.config`):

* admins (``admins`` / ``admin_role_ids``) are always allowed, as on Telegram;
* a direct message (no guild) needs ``allow_dms``; then, like any message, the who-rule;
* the who-rule, Telegram's: ``allowed_users`` and ``allowed_guilds`` both empty = everyone; else
  the user is in ``allowed_users`` or the guild is in ``allowed_guilds`` (a DM has no guild);
* in a guild, a non-empty ``allowed_channels`` also limits where (a thread counts as its parent).

What a refusal looks like is the caller's choice: guild messages are ignored silently; a DM
when DMs are allowed gets :data:`PRIVATE` (Telegram's words), a DM when they are not is ignored;
a slash command or a button press gets the refusal as an ephemeral reply (:func:`admitted`),
since Discord shows "The application did not respond" otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import discord

from bot.core import pseudonym
from bot.discord.config import DiscordConfig
from bot.discord.port import PLATFORM, Interaction, port_of

log = logging.getLogger("nightowl.discord")

PRIVATE = "Sorry, this bot is private. Ask its owner for access (your user id is {user_id})."
NOT_HERE = "I don't answer in this channel."
NO_DMS = "I don't answer direct messages. Ask me in a server channel where I am."


def channel_ids(channel: Any) -> set[int]:
    """The ids that place ``channel`` for ``allowed_channels``: its own and a thread's parent."""
    ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
    return {i for i in ids if isinstance(i, int)}


def refusal(settings: DiscordConfig, *, user_id: int, is_admin: bool, guild_id: int | None,
            channels: Iterable[int]) -> str | None:
    """Why ``user_id`` may not use the bot here (the text to show), or None when allowed."""
    if is_admin:
        return None
    if guild_id is None and not settings.allow_dms:
        return NO_DMS
    listed = bool(settings.allowed_users or settings.allowed_guilds)
    if listed and user_id not in settings.allowed_users \
            and (guild_id is None or guild_id not in settings.allowed_guilds):
        return PRIVATE.format(user_id=user_id)
    if guild_id is not None and settings.allowed_channels \
            and not set(channels) & set(settings.allowed_channels):
        return NOT_HERE
    return None


def interaction_refusal(interaction: Interaction) -> str | None:
    """:func:`refusal` for the user, guild and channel of a slash command or a button press."""
    port = port_of(interaction)
    user = interaction.user
    return refusal(port.settings, user_id=user.id, is_admin=port.is_admin(user),
                   guild_id=interaction.guild_id,
                   channels=channel_ids(interaction.channel) | {interaction.channel_id or 0})


async def admitted(interaction: Interaction) -> bool:
    """Whether the interaction may run; if not, the refusal is its (ephemeral) response."""
    why = interaction_refusal(interaction)
    if why is None:
        return True
    log.info("refused %s from user %s in guild %s channel %s (%s)",
             "a button" if interaction.type == discord.InteractionType.component
             else "a command", pseudonym(PLATFORM, interaction.user.id), interaction.guild_id,
             interaction.channel_id, why.split(".")[0])
    try:
        await interaction.response.send_message(why, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not send a refusal: %s", exc)
    return False
