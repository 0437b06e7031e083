"""What the console is given: the core's services (a Protocol ``bot.core.Core`` satisfies) and
the sections it reads.

The console is a platform: it imports only ``bot.core`` of the bot, receives the same Core (store,
model, knowledge, learning) that ``nightowl run`` builds, and runs every admin command through
``Core.command`` as an admin of platform ``console`` (so each one is checked and audited as in
chat). What has no chat command (knowledge remove/reindex, comparing adapters, exports) it runs
on the same service objects and audits itself.
"""

from __future__ import annotations

from typing import Protocol

from bot.console.config import ConsoleConfig
from bot.core.config import ChatConfig
from bot.core.context import CommandContext
from bot.core.messages import CommandResult, Incoming
from bot.core.moderation import Guards
from rag.base import KnowledgeBase
from training.config import LearningSettings

PLATFORM = "console"


class ConsoleSettings(LearningSettings, Protocol):
    """The sections the console reads (the bot's composed ``Config`` has them all)."""

    @property
    def console(self) -> ConsoleConfig: ...

    @property
    def chat(self) -> ChatConfig: ...


class ConsoleCore(CommandContext, Protocol):
    """The core's services plus its one door for commands (``bot.core.Core``)."""

    @property
    def guard(self) -> Guards:
        """The moderation guard (the dataset preview applies it as training does)."""
        ...

    async def command(self, inc: Incoming, name: str, args: str = "") -> CommandResult: ...


def knowledge_base(core: ConsoleCore) -> KnowledgeBase | None:
    """The full knowledge base (ingest, sources, remove, reindex), or None when it is off."""
    kb = core.knowledge
    return kb if kb is not None and hasattr(kb, "sources") else None  # type: ignore[return-value]


def admin_message(admin: str, text: str = "") -> Incoming:
    """The console admin ``admin`` as the core sees them: an admin of platform ``console``."""
    return Incoming(platform=PLATFORM, chat_id=PLATFORM, user_id=admin, display_name=admin,
                    text=text, is_admin=True)
