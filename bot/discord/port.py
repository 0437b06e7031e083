"""What the slash commands and the buttons need from the running bot: a small port.

:class:`bot.discord.client.NightOwlClient` implements it (the services are injected into the
``commands.Bot`` subclass, as in discord.py's ``advanced_startup`` example). Commands get the port
in their constructor; a persistent button, which discord.py rebuilds from its custom id, finds it
as ``interaction.client`` through :func:`port_of`. Neither imports the client module.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import discord

from bot.core import Attachment, Core, Incoming
from bot.discord.config import DiscordConfig

Interaction = discord.Interaction[Any]
PLATFORM = "discord"  # the platform name in the store and in Incoming


@runtime_checkable
class DiscordPort(Protocol):
    @property
    def core(self) -> Core: ...

    @property
    def settings(self) -> DiscordConfig: ...

    def incoming(self, user: discord.abc.User, chat_id: int, text: str, *,
                 message: discord.Message | None = None,
                 attachments: tuple[Attachment, ...] = ()) -> Incoming:
        """The core's view of a message or an interaction from ``user`` in ``chat_id``."""
        ...

    def is_admin(self, user: discord.abc.User) -> bool: ...

    async def record_shown(self, answer_id: int, chat_id: int, message_ids: list[str]) -> None:
        """Store which Discord messages show an answer (what its 👍/👎 presses are checked
        against: :class:`bot.discord.buttons.FeedbackButton`)."""
        ...

    def answering(self) -> AbstractContextManager[None]:
        """Mark the current task as an answer in progress (shutdown lets it finish)."""
        ...

    async def report_error(self, what: str, *args: Any) -> None:
        """Log an unexpected error and tell the user in plain words when we know who asked."""
        ...


def port_of(interaction: Interaction) -> DiscordPort:
    client = interaction.client
    if not isinstance(client, DiscordPort):
        raise TypeError(f"{type(client).__name__} is not a NightOwl Discord client")
    return client
