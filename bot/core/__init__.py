"""The platform-neutral core: what every platform (Telegram, Discord, the terminal) talks to.

``messages`` (Incoming, Reply, Renderer, CommandResult, Button) · ``conversation`` (:class:`Core`:
one message's path) · ``commands`` (THE command table) · ``handlers`` (what each command does;
``trust``: who may rate or correct, correction notes; ``review``: ``/review``) · ``context``
(what handlers may use) ·
``limits`` · ``moderation`` · ``text`` (the one message splitter) · ``bounded`` (per-key state
that cannot grow without limit) · ``metrics`` · ``config`` (the core's sections) · ``errors``.
A platform folder imports only ``bot.core``.
"""

from __future__ import annotations

from bot.core.commands import COMMANDS, Command
from bot.core.context import Learning
from bot.core.conversation import EMPTY_REPLY, Core
from bot.core.errors import USER_ERRORS, ConfigError, NightOwlError
from bot.core.messages import (
    Attachment,
    Button,
    CollectingRenderer,
    CommandResult,
    Incoming,
    Renderer,
    Reply,
)
from bot.core.text import pseudonym

__all__ = ["COMMANDS", "EMPTY_REPLY", "USER_ERRORS", "Attachment", "Button", "CollectingRenderer",
           "Command", "CommandResult", "ConfigError", "Core", "Incoming", "Learning",
           "NightOwlError", "Renderer", "Reply", "pseudonym"]
