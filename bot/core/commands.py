"""THE command table: every chat command once, with its help, who may run it and its handler.

The /help text, the Telegram command menus and the Discord slash commands (user commands and the
/admin group) are generated from :data:`COMMANDS`; every platform runs a command through
``Core.command``, which checks admin rights and audits admin commands (refusals included).
Adding a chat command is one :class:`Command` entry plus one handler in
:mod:`bot.core.handlers` (ratings and corrections: :mod:`bot.core.trust`; ``/review``:
:mod:`bot.core.review`) plus the README row.

``/ask`` is not a command: it sends its text to the conversation (``Core.handle``) in chats where
a plain message is not addressed to the bot; platforms list it as :data:`ASK`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.core.context import CommandContext
from bot.core.handlers import (
    adapters,
    forget_request,
    ingest,
    new,
    optin,
    optout,
    probe,
    retrain,
    rollback,
    sources,
    status,
)
from bot.core.messages import CommandResult, Incoming
from bot.core.review import review
from bot.core.trust import bad, correct, good

TELEGRAM, DISCORD = "telegram", "discord"
EVERY_MENU = frozenset({TELEGRAM, DISCORD})
INTRO = "NightOwl answers your messages from its knowledge base and learns from your feedback."

Handler = Callable[[CommandContext, Incoming, str], Awaitable[CommandResult]]


@dataclass(frozen=True)
class TextArg:
    """The text a command takes after its name."""

    name: str  # Discord's option name; upper-cased in /help
    help: str
    required: bool = True
    verbs: tuple[str, ...] = ()  # its first word picks an action (Discord offers a choice)

    def usage(self) -> str:
        if self.verbs:
            return f"{'|'.join(self.verbs)} [{self.name.upper()}]"
        return self.name.upper() if self.required else f"[{self.name.upper()}]"


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line: /help, the Telegram menu, Discord's description (<= 100 characters)
    handler: Handler
    admin: bool = False
    text: TextArg | None = None
    file: str = ""  # what document it takes, if any (/ingest); Discord asks for an attachment
    menus: frozenset[str] = EVERY_MENU  # the platforms whose command menu lists it

    def usage(self) -> str:
        return f"/{self.name} {self.text.usage()}" if self.text else f"/{self.name}"


@dataclass(frozen=True)
class Ask:
    """``/ask QUESTION`` as platforms list it (see the module docstring)."""

    name: str = "ask"
    help: str = "Ask NightOwl a question"
    text: TextArg = TextArg("question", "What you want to know")


ASK = Ask()


async def show_help(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return CommandResult(help_text())


COMMANDS: tuple[Command, ...] = (
    Command("start", "What NightOwl does", show_help, menus=frozenset({TELEGRAM})),
    Command("help", "How to use NightOwl", show_help, menus=frozenset({TELEGRAM})),
    Command("new", "Start a fresh conversation", new),
    Command("sources", "Show the sources of the last answer", sources),
    Command("good", "Rate the last answer 👍 (or press its 👍 button)", good, menus=frozenset()),
    Command("bad", "Rate the last answer 👎 (or press its 👎 button)", bad, menus=frozenset()),
    Command("correct", "Give the right answer to the last question (for training)", correct,
            text=TextArg("text", "The correct answer")),
    Command("optout", "Keep your conversations out of training", optout),
    Command("optin", "Allow your conversations in training again", optin),
    Command("forget", "Delete everything NightOwl stored about you", forget_request),
    Command("status", "Model, adapter, queue, knowledge and training", status, admin=True),
    Command("retrain", "Start a learning cycle now", retrain, admin=True),
    Command("rollback", "Switch to an earlier adapter", rollback, admin=True,
            text=TextArg("version", "Adapter version such as v0003; empty = the previous one",
                         required=False)),
    Command("adapters", "List trained adapters", adapters, admin=True),
    Command("ingest", "Add a document to the knowledge base", ingest, admin=True,
            file="A .md, .txt, .pdf, .docx or .html file"),
    Command("probe", "Manage the regression probes used to gate training", probe, admin=True,
            text=TextArg("text", "add: QUESTION => EXPECTED; remove: N", required=False,
                         verbs=("list", "add", "remove"))),
    Command("review", "Approve or reject suggestions, ratings and a waiting adapter", review,
            admin=True, text=TextArg("text", "ID (c12, a7, candidate); for edit: ID NEW TEXT",
                                     required=False,
                                     verbs=("list", "approve", "reject", "edit"))),
)
BY_NAME = {c.name: c for c in COMMANDS}


def in_menu(platform: str, *, admin: bool) -> list[Command]:
    """The commands a platform's menu lists for users (``admin=False``) or admins only."""
    return [c for c in COMMANDS if platform in c.menus and c.admin == admin]


def help_text() -> str:
    """/help: every command but the ones that show this text, users' first."""
    listed = [c for c in COMMANDS if c.handler is not show_help]
    lines = [INTRO]
    lines += [f"{c.usage()} - {c.help}" for c in listed if not c.admin]
    lines.append("Admins:")
    lines += [f"{c.usage()} - {c.help}" for c in listed if c.admin]
    return "\n".join(lines)
