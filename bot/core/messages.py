"""Platform-neutral message types: what adapters hand the core and what they render."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Attachment:
    """A file the user sent. ``fetch`` downloads it (adapters decide how). ``problem`` says why
    the platform cannot hand it over (too large for its API, a type nothing reads): the core then
    refuses it inside the audited command instead of the adapter refusing it unrecorded."""

    name: str
    size: int
    fetch: Callable[[], Awaitable[bytes]]
    mime: str = ""
    problem: str = ""


@dataclass(frozen=True)
class Incoming:
    platform: str  # "terminal" | "telegram" | "discord"
    chat_id: str
    user_id: str
    display_name: str
    text: str
    is_admin: bool = False  # decided by the adapter from its config
    message_id: str | None = None  # the platform's id of this message
    reply_to_message_id: str | None = None  # the platform's id of the message replied to
    attachments: tuple[Attachment, ...] = ()


@dataclass
class Reply:
    """A finished answer. ``text`` includes the citation footer and notices."""

    text: str
    answer_id: int | None = None  # store id of the answer (feedback buttons carry it)
    sources: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    model: str = ""
    adapter: str | None = None
    latency_s: float = 0.0
    feedback: bool = True  # whether to show 👍/👎
    answer: str = ""  # the model's answer alone (what was streamed), without footer/notices


@dataclass(frozen=True)
class Button:
    """A button under a command's result that runs ``/command args`` for whoever presses it,
    through ``Core.command`` (so admin rights are checked and audited as for typed commands)."""

    label: str
    command: str
    args: str


@dataclass
class CommandResult:
    text: str
    ok: bool = True
    confirm: str | None = None  # if set, the adapter asks for confirmation of this action
    files: list[Path] = field(default_factory=list)  # e.g. a training plot to attach
    buttons: list[tuple[Button, ...]] = field(default_factory=list)  # rows of buttons, if any


class Renderer(Protocol):
    """What an adapter gives the core to stream an answer into."""

    async def start(self) -> None:
        """Generation is starting (show typing)."""
        ...

    async def update(self, text: str) -> None:
        """The answer so far (full text, not a delta). Adapters throttle edits themselves."""
        ...

    async def finish(self, reply: Reply) -> None:
        """The final answer; render it completely, with feedback buttons when asked."""
        ...


@runtime_checkable
class DeliveryReport(Protocol):
    """Optional renderer capability: the platform ids of the messages that show the answer."""

    def platform_message_ids(self) -> list[str]: ...


class CollectingRenderer:
    """A renderer that just remembers what it was given (terminal scripts, tests)."""

    def __init__(self) -> None:
        self.started = False
        self.updates: list[str] = []
        self.reply: Reply | None = None

    async def start(self) -> None:
        self.started = True

    async def update(self, text: str) -> None:
        self.updates.append(text)

    async def finish(self, reply: Reply) -> None:
        self.reply = reply


Notifier = Callable[[str, list[Path]], Awaitable[None]]
