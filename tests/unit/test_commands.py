"""THE command table: every command has a handler, every platform offers what the table says.

The /help text, the Telegram menus and handlers, and the Discord slash commands (including the
/admin group, built alone against a fake port) are generated from ``bot.core.commands``; adding an
entry is enough for it to appear everywhere.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from discord import app_commands

from bot.config import Config
from bot.core import CollectingRenderer, CommandResult, Core, Incoming
from bot.core import commands as table
from bot.core.commands import ASK, COMMANDS, DISCORD, EVERY_MENU, TELEGRAM, Command, in_menu
from bot.discord.commands import AdminGroup, slash_commands
from bot.discord.config import DiscordConfig
from bot.telegram.adapter import command_names, menus
from data.store import Store
from llm.fake import FakeChatModel
from tests.fakes.learning import FakeLearning


def test_every_command_has_a_handler_and_fits_every_menu() -> None:
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) and ASK.name not in names
    for cmd in COMMANDS:
        assert inspect.iscoroutinefunction(cmd.handler), cmd.name
        assert list(inspect.signature(cmd.handler).parameters) == ["ctx", "inc", "args"]
        assert re.fullmatch(r"[a-z0-9_]{1,32}", cmd.name), cmd.name  # Telegram and Discord
        assert 1 <= len(cmd.help) <= 100, cmd.name  # Discord's description limit
        assert cmd.menus <= EVERY_MENU, cmd.name
        assert not (cmd.text and cmd.file), cmd.name  # one argument shape per command


@pytest.fixture
def core(cfg: Config, store: Store) -> Core:
    return Core(cfg, store, FakeChatModel(), None, FakeLearning())


async def test_every_command_runs_through_the_core(core: Core) -> None:
    await core.handle(Incoming("terminal", "c", "u", "U", "hello"), CollectingRenderer())
    for cmd in COMMANDS:
        inc = Incoming("terminal", "c", "u", "U", f"/{cmd.name}", is_admin=True)
        result = await core.command(inc, cmd.name, "list" if cmd.text and cmd.text.verbs else "")
        assert "Unknown command" not in result.text and result.text, cmd.name
    await core.wait_background()
    audited = {e.action for e in await core.store.audit_log()}
    assert audited == {c.name for c in COMMANDS if c.admin}  # every admin command is audited


def test_help_lists_the_table() -> None:
    text = table.help_text()
    users, _, admins = text.partition("\nAdmins:\n")
    for cmd in COMMANDS:
        if cmd.handler is table.show_help:
            assert f"/{cmd.name} " not in text  # the commands that show the help
            continue
        assert f"{cmd.usage()} - {cmd.help}" in (admins if cmd.admin else users), cmd.name
    assert "/correct TEXT - " in users and "/rollback [VERSION] - " in admins
    assert "/probe list|add|remove [TEXT] - " in admins


def test_telegram_handlers_and_menus_come_from_the_table() -> None:
    assert set(command_names()) == {c.name for c in COMMANDS} | {ASK.name}
    users, admins = menus()
    user_names = [c.command for c in users]
    assert user_names == [ASK.name] + [c.name for c in in_menu(TELEGRAM, admin=False)]
    assert [c.command for c in admins] == user_names + [c.name for c in
                                                        in_menu(TELEGRAM, admin=True)]
    wanted = {c.name: c.help for c in COMMANDS if TELEGRAM in c.menus}
    assert {c.command: c.description for c in admins if c.command != ASK.name} == wanted


@dataclass
class FakePort:
    """A DiscordPort without a client: what the generated commands call."""

    core: Any
    settings: DiscordConfig = field(default_factory=lambda: DiscordConfig(admins=[1]))
    errors: list[str] = field(default_factory=list)

    def incoming(self, user: Any, chat_id: int, text: str, *, message: Any = None,
                 attachments: tuple[Any, ...] = ()) -> Incoming:
        return Incoming("discord", str(chat_id), str(user.id), user.display_name, text,
                        is_admin=self.is_admin(user), attachments=attachments)

    def is_admin(self, user: Any) -> bool:
        return bool(user.id in self.settings.admins)

    def channel_allowed(self, channel: Any) -> bool:
        return True

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        yield

    async def report_error(self, what: str, *args: Any) -> None:
        self.errors.append(what)


class RecordingCore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    async def command(self, inc: Incoming, name: str, args: str = "") -> CommandResult:
        self.calls.append((name, args, inc.is_admin))
        return CommandResult(f"ran /{name}")


@dataclass
class FakeUser:
    id: int
    display_name: str = "Ada"


class FakeResponse:
    def __init__(self) -> None:
        self.deferred: dict[str, Any] | None = None
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def defer(self, **kw: Any) -> None:
        self.deferred = kw

    def is_done(self) -> bool:
        return self.deferred is not None

    async def send_message(self, text: str, **kw: Any) -> None:
        self.sent.append((text, kw))


class FakeFollowup:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, text: str, **kw: Any) -> None:
        self.sent.append((text, kw))


@dataclass
class FakeInteraction:
    user: FakeUser
    channel_id: int = 7
    response: FakeResponse = field(default_factory=FakeResponse)
    followup: FakeFollowup = field(default_factory=FakeFollowup)


def options(cmd: app_commands.Command[Any, Any, Any]) -> dict[str, tuple[bool, list[str]]]:
    return {p.display_name: (p.required, [c.value for c in p.choices]) for p in cmd.parameters}


def test_discord_commands_come_from_the_table() -> None:
    built = slash_commands(FakePort(RecordingCore()))
    top = {c.name: c for c in built}
    assert set(top) == {ASK.name, "admin"} | {c.name for c in in_menu(DISCORD, admin=False)}
    group = top["admin"]
    assert isinstance(group, AdminGroup)
    subs = {c.name: c for c in group.commands}
    assert set(subs) == {c.name for c in in_menu(DISCORD, admin=True)}
    for cmd in COMMANDS:
        if DISCORD not in cmd.menus:
            assert cmd.name not in top and cmd.name not in subs
            continue
        slash = subs[cmd.name] if cmd.admin else top[cmd.name]
        assert isinstance(slash, app_commands.Command) and slash.description == cmd.help
        opts = options(slash)
        if cmd.file:
            assert opts == {"attachment": (True, [])}
        elif cmd.text is None:
            assert opts == {}
        elif cmd.text.verbs:
            assert opts == {"action": (True, list(cmd.text.verbs)), cmd.text.name: (False, [])}
        else:
            assert opts == {cmd.text.name: (cmd.text.required, [])}
    assert options(top[ASK.name]) == {"question": (True, [])}  # type: ignore[arg-type]


async def test_the_admin_group_runs_alone_against_a_port() -> None:
    core = RecordingCore()
    group = AdminGroup(FakePort(core))
    probe = next(c for c in group.commands if c.name == "probe")
    assert isinstance(probe, app_commands.Command)
    interaction = FakeInteraction(FakeUser(1))
    await probe.callback(interaction, "add", "2+2 => 4")  # type: ignore[arg-type,call-arg]
    assert core.calls == [("probe", "add 2+2 => 4", True)]
    assert interaction.response.deferred == {"ephemeral": True, "thinking": True}
    assert interaction.followup.sent == [("ran /probe", {"ephemeral": True})]
    rollback = next(c for c in group.commands if c.name == "rollback")
    assert isinstance(rollback, app_commands.Command)
    await rollback.callback(FakeInteraction(FakeUser(2)))  # type: ignore[arg-type,call-arg]
    assert core.calls[-1] == ("rollback", "", False)  # the core decides: not an admin


async def test_one_entry_and_a_handler_make_a_command_everywhere(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    async def stats(ctx: Any, inc: Incoming, args: str) -> CommandResult:
        return CommandResult(f"stats for {args or 'everyone'}")

    extra = Command("stats", "Show usage statistics", stats, admin=True,
                    text=table.TextArg("who", "Whose statistics", required=False))
    monkeypatch.setattr(table, "COMMANDS", (*COMMANDS, extra))
    monkeypatch.setattr(table, "BY_NAME", {**table.BY_NAME, "stats": extra})
    inc = Incoming("terminal", "c", "root", "Root", "/stats", is_admin=True)
    assert (await core.command(inc, "stats", "ada")).text == "stats for ada"
    assert "/stats [WHO] - Show usage statistics" in table.help_text()
    assert "stats" in command_names() and "stats" in [c.command for c in menus()[1]]
    (group,) = [c for c in slash_commands(FakePort(RecordingCore())) if c.name == "admin"]
    assert isinstance(group, app_commands.Group) and "stats" in [c.name for c in group.commands]
