"""NightOwl's slash commands on Discord, the command-tree hash, and the tree error handler.

Every command defers within Discord's 3-second deadline, then calls the core. Admin commands are
checked in code (user ids / role ids from ``[discord]``), answered ephemerally, and audited by
``Core.command`` — including refusals.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands

from bot.discord_render import InteractionRenderer, forget_view, split_text
from bot.messages import Attachment

if TYPE_CHECKING:
    from bot.discord_bot import DiscordBot

log = logging.getLogger("nightowl.discord")

Interaction = discord.Interaction[Any]


async def tell(interaction: Interaction, text: str, *, ephemeral: bool = True,
               files: list[discord.File] | None = None, view: discord.ui.View | None = None
               ) -> None:
    """Send ``text`` as the response (or followups), split at 2000 characters."""
    chunks = split_text(text) if text.strip() else ["(no output)"]
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


def register_commands(bot: DiscordBot) -> None:
    """Add the user commands and the /admin group to ``bot.client.tree``."""
    tree = bot.client.tree
    core = bot.core

    async def run(interaction: Interaction, name: str, args: str = "") -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        inc = bot.incoming(interaction.user, interaction.channel_id or 0, args)
        result = await core.command(inc, name, args)
        view = forget_view(interaction.user.id) if result.confirm == "forget" else None
        await tell(interaction, result.text, view=view)

    @app_commands.command(name="ask", description="Ask NightOwl a question")
    @app_commands.describe(question="What you want to know")
    async def ask(interaction: Interaction,
                  question: app_commands.Range[str, 1, 4000]) -> None:
        if interaction.guild_id is not None and not bot.channel_allowed(interaction.channel):
            await interaction.response.send_message("I don't answer in this channel.",
                                                    ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        renderer = InteractionRenderer(interaction, bot.dc.stream_edit_interval_s)
        inc = bot.incoming(interaction.user, interaction.channel_id or 0, question)
        with bot.answering():
            await core.handle(inc, renderer)

    @app_commands.command(name="new", description="Start a fresh conversation")
    async def new(interaction: Interaction) -> None:
        await run(interaction, "new")

    @app_commands.command(name="sources", description="Show the sources of the last answer")
    async def sources(interaction: Interaction) -> None:
        await run(interaction, "sources")

    @app_commands.command(name="correct",
                          description="Give the right answer to the last question (for training)")
    @app_commands.describe(text="The correct answer")
    async def correct(interaction: Interaction, text: app_commands.Range[str, 1, 4000]) -> None:
        await run(interaction, "correct", text)

    @app_commands.command(name="optout", description="Keep your conversations out of training")
    async def optout(interaction: Interaction) -> None:
        await run(interaction, "optout")

    @app_commands.command(name="optin", description="Allow your conversations in training again")
    async def optin(interaction: Interaction) -> None:
        await run(interaction, "optin")

    @app_commands.command(name="forget", description="Delete everything NightOwl stored about you")
    async def forget(interaction: Interaction) -> None:
        await run(interaction, "forget")

    shown_to = bot.dc.admin_menu_permission  # "" = everyone; access is checked in code anyway
    admin = app_commands.Group(
        name="admin", description="NightOwl administration (admins only)",
        default_permissions=discord.Permissions(**{shown_to: True}) if shown_to else None)

    async def run_admin(interaction: Interaction, name: str, args: str = "",
                        attachment: discord.Attachment | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        atts: tuple[Attachment, ...] = ()
        if attachment is not None and bot.is_admin(interaction.user):
            from bot.discord_bot import attachment_problem

            problem = attachment_problem(attachment.filename, attachment.size,
                                         bot.dc.max_attachment_mb)  # refused by the core, audited
            atts = (Attachment(name=attachment.filename, size=attachment.size,
                               fetch=attachment.read, mime=attachment.content_type or "",
                               problem=problem or ""),)
        inc = bot.incoming(interaction.user, interaction.channel_id or 0, args, attachments=atts)
        result = await core.command(inc, name, args)
        files = [discord.File(p) for p in result.files if p.exists()]
        await tell(interaction, result.text, files=files)

    @admin.command(name="status", description="Model, adapter, queue, knowledge and training")
    async def status(interaction: Interaction) -> None:
        await run_admin(interaction, "status")

    @admin.command(name="retrain", description="Start a learning cycle now")
    async def retrain(interaction: Interaction) -> None:
        await run_admin(interaction, "retrain")

    @admin.command(name="rollback", description="Switch to an earlier adapter")
    @app_commands.describe(version="Adapter version such as v0003; empty = the previous one")
    async def rollback(interaction: Interaction, version: str | None = None) -> None:
        await run_admin(interaction, "rollback", version or "")

    @admin.command(name="adapters", description="List trained adapters")
    async def adapters(interaction: Interaction) -> None:
        await run_admin(interaction, "adapters")

    @admin.command(name="ingest", description="Add a document to the knowledge base")
    @app_commands.describe(attachment="A .md, .txt, .pdf, .docx or .html file")
    async def ingest(interaction: Interaction, attachment: discord.Attachment) -> None:
        await run_admin(interaction, "ingest", "", attachment)

    @admin.command(name="probe", description="Manage the regression probes used to gate training")
    @app_commands.describe(action="What to do", text="add: QUESTION => EXPECTED; remove: N")
    async def probe(interaction: Interaction, action: Literal["list", "add", "remove"],
                    text: str | None = None) -> None:
        await run_admin(interaction, "probe", f"{action} {text or ''}".strip())

    cmds: list[app_commands.Command[Any, Any, Any] | app_commands.Group] = [
        ask, new, sources, correct, optout, optin, forget, admin]
    for cmd in cmds:
        tree.add_command(cmd)

    @tree.error
    async def on_tree_error(interaction: Interaction, error: app_commands.AppCommandError
                            ) -> None:
        """Log, answer the user in plain words, keep running."""
        from bot.discord_bot import SORRY

        original = getattr(error, "original", error)
        log.error("slash command %s failed", getattr(interaction.command, "qualified_name", "?"),
                  exc_info=(type(original), original, original.__traceback__))
        try:
            await tell(interaction, SORRY)
        except discord.HTTPException as exc:
            log.warning("could not tell the user about the error: %s", exc)


def tree_hash(bot: DiscordBot) -> str:
    """A stable hash of the command definitions and where they are synced."""
    tree = bot.client.tree
    cmds = sorted((c.to_dict(tree) for c in tree.get_commands()), key=lambda d: str(d["name"]))
    blob = json.dumps({"guilds": sorted(bot.dc.guild_ids), "commands": cmds}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


async def sync_commands(bot: DiscordBot) -> bool:
    """Push the command tree only when it changed since the last successful sync.

    The last hash is kept in the store's key-value table (per application id). Returns whether a
    sync happened.
    """
    client = bot.client
    tree = client.tree
    digest = tree_hash(bot)
    key = f"{bot.KV_TREE_HASH}:{client.application_id}"
    guilds = [discord.Object(g) for g in bot.dc.guild_ids]
    for g in guilds:  # guild copies are needed in memory on every start
        tree.copy_global_to(guild=g)
    if await bot.core.store.kv_get(key) == digest:
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
    await bot.core.store.kv_set(key, digest)
    log.info("slash commands synced to %s", f"guilds {bot.dc.guild_ids}" if guilds else "all "
             "guilds (global; may take up to an hour to appear)")
    return True
