"""The terminal adapter: ``nightowl chat`` (interactive or piped) and ``nightowl ask``.

The terminal user is the local operator: an admin (admin commands are allowed; their ratings and
corrections count as an admin's) and not rate-limited, so a piped session is processed line by
line, every line answered.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.core import Attachment, CommandResult, Core, Incoming, Reply
from bot.core.text import split_command

PLATFORM = "terminal"
QUIT = frozenset({"/quit", "/exit", "/q"})


class TerminalRenderer:
    """Streams the answer to a text stream as it is generated."""

    def __init__(self, out: TextIO, stream: bool = True) -> None:
        self.out = out
        self.stream = stream
        self.shown = 0

    async def start(self) -> None:
        return None

    async def update(self, text: str) -> None:
        if self.stream and len(text) > self.shown:
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)

    async def finish(self, reply: Reply) -> None:
        text = reply.text
        if self.shown and reply.answer and text.startswith(reply.answer):
            self.out.write(text[len(reply.answer):])  # answer already streamed: the footer
        else:
            if self.shown:
                self.out.write("\n")
            self.out.write(text)
        self.out.write("\n\n")
        self.out.flush()
        self.shown = 0


def _file_attachment(path: Path) -> Attachment:
    async def fetch() -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    return Attachment(name=path.name, size=path.stat().st_size if path.exists() else 0,
                      fetch=fetch)


class TerminalChat:
    """Reads user lines, runs commands or answers, and prints the results."""

    def __init__(self, core: Core, out: TextIO | None = None,
                 read_line: Callable[[str], str] | None = None, interactive: bool = False,
                 chat_id: str = "local") -> None:
        self.core = core
        self.out = out or sys.stdout
        self.interactive = interactive
        self.read_line = read_line
        self.chat_id = chat_id
        self.user = getpass.getuser() if interactive else "operator"

    def incoming(self, text: str, attachments: tuple[Attachment, ...] = ()) -> Incoming:
        return Incoming(platform=PLATFORM, chat_id=self.chat_id, user_id="operator",
                        display_name=self.user, text=text, is_admin=True,
                        attachments=attachments)

    async def handle_line(self, line: str) -> bool:
        """Handle one input line; return False when the user asked to quit."""
        text = line.rstrip("\n")
        if text.strip() in QUIT:
            return False
        if text.startswith("/"):
            await self._command(*split_command(text))
            return True
        renderer = TerminalRenderer(self.out)
        await self.core.handle(self.incoming(text), renderer)
        return True

    async def _command(self, name: str, args: str) -> None:
        attachments: tuple[Attachment, ...] = ()
        if name == "ingest" and args.strip():
            attachments = tuple(_file_attachment(Path(p).expanduser()) for p in args.split())
            args = ""
        result = await self.core.command(self.incoming("/" + name, attachments), name, args)
        if result.confirm == "forget":
            answer = await self._ask(f"{result.text} Type 'yes' to confirm: ")
            if answer.strip().lower() in ("yes", "y"):
                result = await self.core.forget(self.incoming("/forget"))
            else:
                result = CommandResult("Cancelled; nothing was deleted.")
        if name == "retrain" and result.ok:
            self._print(result.text)
            await self.core.wait_background()
            return
        self._print(result.text)

    async def _ask(self, prompt: str) -> str:
        if self.read_line is None:
            return ""
        try:
            return await asyncio.to_thread(self.read_line, prompt)
        except EOFError:
            return ""

    def _print(self, text: str) -> None:
        self.out.write(text.rstrip() + "\n\n")
        self.out.flush()

    async def run(self) -> int:
        """Loop until /quit or end of input."""
        if self.interactive:
            self._print("NightOwl terminal chat. Type a question, /help for commands, /quit to "
                        "leave.")
        read = self.read_line or (lambda prompt: _read_stdin())
        prompt = "you> " if self.interactive else ""
        while True:
            try:
                line = await asyncio.to_thread(read, prompt)
            except (EOFError, KeyboardInterrupt):
                break
            if not line.strip() and not self.interactive:
                continue
            if self.interactive:
                self.out.write("owl> ")
            if not await self.handle_line(line):
                break
        return 0


def _read_stdin() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def interactive_reader(prompt: str) -> str:
    return input(prompt)
