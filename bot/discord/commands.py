"""The core's command table as Discord slash commands: ``/ask``, the user commands, ``/admin``.

Every command is generated from ``bot.core.commands.COMMANDS`` (the entries whose menus include
Discord): a user command becomes ``/name``, an admin command a subcommand of the ``/admin``
group (:class:`AdminGroup`); a command's text becomes a string option (a choice when it has
verbs), a document an attachment option. Every command defers within Discord's 3-second
deadline, then calls the core through the :class:`DiscordPort` it was built with; results are
ephemeral. Who may run any of them where is checked first, for all alike, by the client's
:class:`GatedTree` (:mod:`bot.discord.access`). Admin commands are checked in code (user ids /
role ids from ``[discord]``) and audited by ``Core.command``, refusals included;
``admin_menu_permission`` only hides the menu.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import discord
from discord import app_commands

from bot.core import Attachment
from bot.core.commands import ASK, DISCORD, Command, in_menu
from bot.discord.access import admitted
from bot.discord.attachments import attachment_problem
from bot.discord.buttons import command_view, forget_view
from bot.discord.format import split_message
from bot.discord.port import DiscordPort, Interaction
from bot.discord.render import InteractionRenderer

log = logging.getLogger("nightowl.discord")

SORRY = "Sorry, something went wrong on my side. Please try again in a moment."
MAX_TEXT = 4000
Text = app_commands.Range[str, 1, MAX_TEXT]
Slash = app_commands.Command[Any, Any, Any]


async def tell(interaction: Interaction, text: str, *, ephemeral: bool = True,
               files: list[discord.File] | None = None, view: discord.ui.View | None = None
               ) -> None:
    """Send ``text`` as the response (or followups), split at 2000 characters."""
    chunks = split_message(text) or ["(no output)"]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        extra: dict[str, Any] = {}
        if last and files:
            extra["files"] = files
        if last and view is not None:
            extra["view"] = view
        if not interaction.response.is_done():
            await interaction.response.send_message(chunk, ephemeral=ephemeral, **extra)
        else:
            await interaction.followup.send(chunk, ephemeral=ephemeral, **extra)


async def run(port: DiscordPort, interaction: Interaction, cmd: Command, args: str = "",
              attachment: discord.Attachment | None = None) -> None:
    """One command of the table: defer, the core, then the (ephemeral) result."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    atts: tuple[Attachment, ...] = ()
    if attachment is not None and port.is_admin(interaction.user):  # others': never read
        problem = attachment_problem(attachment.filename, attachment.size,
                                     port.settings.max_attachment_mb)  # refused by the core
        atts = (Attachment(name=attachment.filename, size=attachment.size,
                           fetch=attachment.read, mime=attachment.content_type or "",
                           problem=problem or ""),)
    inc = port.incoming(interaction.user, interaction.channel_id or 0, args, attachments=atts)
    result = await port.core.command(inc, cmd.name, args)
    view = (forget_view(interaction.user.id) if result.confirm == "forget" else
            command_view(result.buttons) if result.buttons else None)
    files = [discord.File(p) for p in result.files if p.exists()]
    await tell(interaction, result.text, files=files, view=view)


def build(port: DiscordPort, cmd: Command) -> Slash:
    """The slash command for one table entry (its options follow the entry's text and file)."""
    arg, file = cmd.text, cmd.file
    if file:
        async def with_file(interaction: Interaction, attachment: discord.Attachment) -> None:
            await run(port, interaction, cmd, "", attachment)

        callback: Any = app_commands.describe(attachment=file)(with_file)
    elif arg is None:
        async def plain(interaction: Interaction) -> None:
            await run(port, interaction, cmd)

        callback = plain
    elif arg.verbs:
        choices = [app_commands.Choice(name=v, value=v) for v in arg.verbs]

        async def with_verb(interaction: Interaction, action: str,
                            text: str | None = None) -> None:
            await run(port, interaction, cmd, f"{action} {text or ''}".strip())

        callback = app_commands.choices(action=choices)(
            app_commands.describe(action="What to do", text=arg.help)(
                app_commands.rename(text=arg.name)(with_verb)))
    elif arg.required:
        async def with_text(interaction: Interaction, text: Text) -> None:
            await run(port, interaction, cmd, text)

        callback = app_commands.describe(text=arg.help)(
            app_commands.rename(text=arg.name)(with_text))
    else:
        async def maybe_text(interaction: Interaction, text: str | None = None) -> None:
            await run(port, interaction, cmd, text or "")

        callback = app_commands.describe(text=arg.help)(
            app_commands.rename(text=arg.name)(maybe_text))
    return app_commands.Command(name=cmd.name, description=cmd.help, callback=callback)


class AdminGroup(app_commands.Group):
    """``/admin``: the table's admin commands; shown to everyone unless ``admin_menu_permission``
    names a Discord permission (cosmetic: the core checks who may run them)."""

    def __init__(self, port: DiscordPort) -> None:
        shown_to = port.settings.admin_menu_permission
        super().__init__(name="admin", description="NightOwl administration (admins only)",
                         default_permissions=(discord.Permissions(**{shown_to: True})
                                              if shown_to else None))
        for cmd in in_menu(DISCORD, admin=True):
            self.add_command(build(port, cmd))


def ask_command(port: DiscordPort) -> Slash:
    """``/ask``: the conversation itself, answered in the channel (not ephemeral)."""

    async def ask(interaction: Interaction, question: Text) -> None:
        await interaction.response.defer(thinking=True)
        renderer = InteractionRenderer(interaction, port.settings.stream_edit_interval_s,
                                       record=port.record_shown)
        inc = port.incoming(interaction.user, interaction.channel_id or 0, question)
        with port.answering():
            await port.core.handle(inc, renderer)

    callback = app_commands.describe(question=ASK.text.help)(ask)
    return app_commands.Command(name=ASK.name, description=ASK.help, callback=callback)


def slash_commands(port: DiscordPort) -> list[Slash | app_commands.Group]:
    """Everything the bot registers: /ask, the user commands, the /admin group."""
    users: list[Slash | app_commands.Group] = [ask_command(port)]
    users += [build(port, c) for c in in_menu(DISCORD, admin=False)]
    return [*users, AdminGroup(port)]


class GatedTree(app_commands.CommandTree[Any]):
    """The client's command tree: every slash command (``/ask``, the user commands, ``/admin``)
    first passes :func:`bot.discord.access.admitted` (allowlists, channels, DMs)."""

    async def interaction_check(self, interaction: Interaction, /) -> bool:
        return await admitted(interaction)


def install(tree: app_commands.CommandTree[Any], port: DiscordPort) -> None:
    """Add every command to ``tree``, and an error handler that answers in plain words."""
    for command in slash_commands(port):
        tree.add_command(command)

    @tree.error
    async def on_tree_error(interaction: Interaction, error: app_commands.AppCommandError
                            ) -> None:
        original = getattr(error, "original", error)
        log.error("slash command %s failed", getattr(interaction.command, "qualified_name", "?"),
                  exc_info=(type(original), original, original.__traceback__))
        try:
            await tell(interaction, SORRY)
        except discord.HTTPException as exc:
            log.warning("could not tell the user about the error: %s", exc)


def tree_hash(tree: app_commands.CommandTree[Any], guild_ids: list[int]) -> str:
    """A stable hash of the command definitions and where they are synced."""
    cmds = sorted((c.to_dict(tree) for c in tree.get_commands()), key=lambda d: str(d["name"]))
    blob = json.dumps({"guilds": sorted(guild_ids), "commands": cmds}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


KV_TREE_HASH = "discord:command_tree_hash"


async def sync_commands(client: discord.Client, tree: app_commands.CommandTree[Any],
                        port: DiscordPort) -> bool:
    """Push the command tree only when it changed since the last successful sync.

    The last hash is kept in the store's key-value table (per application id). Returns whether a
    sync happened.
    """
    guild_ids = port.settings.guild_ids
    digest = tree_hash(tree, guild_ids)
    key = f"{KV_TREE_HASH}:{client.application_id}"
    guilds = [discord.Object(g) for g in guild_ids]
    for g in guilds:  # guild copies are needed in memory on every start
        tree.copy_global_to(guild=g)
    store = port.core.store
    if await store.kv_get(key) == digest:
        log.info("slash commands unchanged; not syncing")
        return False
    try:
        if guilds:
            for g in guilds:
                await tree.sync(guild=g)
        else:
            await tree.sync()
    except discord.HTTPException as exc:
        log.warning("could not sync slash commands (%s). Invite the bot with the "
                    "applications.commands scope; commands may be missing until then.", exc)
        return False
    await store.kv_set(key, digest)
    log.info("slash commands synced to %s", f"guilds {guild_ids}" if guilds else "all "
             "guilds (global; may take up to an hour to appear)")
    return True
