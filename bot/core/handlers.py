"""What the chat commands do: one handler per command of the table in :mod:`bot.core.commands`.

A handler gets the core (as :class:`CommandContext`), the message and the text after the
command's name; it returns a :class:`CommandResult` and raises only ``USER_ERRORS`` (shown to
the user). ``Core.command`` has already checked admin rights; it audits admin commands.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bot.core.context import CommandContext, Learning, Outcome
from bot.core.messages import CommandResult, Incoming
from bot.core.trust import forget_notes, target_answer

__all__ = ["CommandContext", "Learning", "Outcome"]  # the protocols, for older imports

log = logging.getLogger("nightowl.core")


# ---- user commands --------------------------------------------------------------------------
async def new(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.end_conversation(user.id, inc.platform, inc.chat_id)
    return CommandResult("Started a new conversation. Earlier messages are no longer used.")


async def sources(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    target = await target_answer(ctx, inc)  # answers are public in their chat: any asker's
    msg = await ctx.store.get_message(target.answer_id) if target else None
    if msg is None:
        return CommandResult("There is no answer yet in this conversation.", ok=False)
    if not msg.sources:
        return CommandResult("The last answer used no sources from the knowledge base.")
    lines = []
    for i, s in enumerate(msg.sources, 1):
        label = f"{s['source']} › {s['section']}" if s.get("section") else s["source"]
        snippet = " ".join(str(s.get("text", "")).split())[:300]
        lines.append(f"[{i}] {label} (score {s.get('score', 0):.2f})\n{snippet}")
    return CommandResult("\n\n".join(lines))


async def optout(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.set_opted_out(user.id, True)
    return CommandResult("Done: your conversations will not be used for training. "
                         "/optin to undo.")


async def optin(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.set_opted_out(user.id, False)
    return CommandResult("Done: your conversations may be used for training again.")


async def forget_request(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return CommandResult("This deletes all your messages, feedback and corrections. "
                         "Are you sure?", confirm="forget")


async def forget(ctx: CommandContext, inc: Incoming) -> CommandResult:
    """Delete everything stored about this user (after the platform's confirmation; the core
    holds the user's locks, so no answer of theirs is in flight). Whatever could not be deleted
    is said in the reply (and told to the admins), never reported as deleted."""
    user = await ctx.store.get_user(inc.platform, inc.user_id)
    if user is None:
        return CommandResult("There is nothing stored about you.")
    by = f"{inc.platform}:{inc.user_id}"
    # answers store a passage's document name (rag.search): the uploads are purged by it
    uploaded = sorted({Path(s.source).name for s in await ctx.store.kb_sources(ingested_by=by)})
    who = await ctx.store.forgotten(user.id, uploaded)  # the ids the files are purged by
    notes_problem = await forget_notes(ctx, user.id)  # before the rows: it needs nothing else
    counts = await ctx.store.forget_user(user.id, uploaded)
    failed: list[str] = []
    if ctx.learning is not None:
        try:
            await ctx.learning.purge_forgotten(who)
        except Exception:
            log.exception("could not purge the dataset files of a forgotten user (%d messages)",
                          len(who.message_ids))
            failed.append("your examples in the training data files on disk")
    uploads: list[str] = []
    remove = getattr(ctx.knowledge, "remove_by_uploader", None)
    if remove is not None:
        try:
            uploads = list(await remove(by))
        except Exception:
            log.exception("could not remove the uploads of a forgotten user")
            failed.append(f"{len(uploaded)} uploaded document(s) in the knowledge base")
    note = f"\nRemoved {len(uploads)} uploaded document(s)." if uploads else ""
    note += notes_problem
    if failed:
        note += ("\n⚠️ Not deleted yet: " + "; ".join(failed) + ". The error is logged and the "
                 "admins are told, so they can finish it.")
        await ctx.notify_admins("/forget could not delete " + "; ".join(failed).replace(
            "your ", "a user's ") + " (see the log).")
    if ctx.learning is not None and ctx.learning.adapters_text().strip():
        note += ("\nAdapters trained before today may still reflect your past "
                 "conversations; an admin can retrain without them.")
    return CommandResult(f"Deleted {counts.messages} messages, {counts.feedback} "
                         f"ratings and {counts.corrections} corrections from the database."
                         f"{note}", ok=not failed)


# ---- admin commands -------------------------------------------------------------------------
async def status(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return CommandResult(await status_text(ctx))


async def status_text(ctx: CommandContext) -> str:
    stats = await ctx.store.stats()
    parts = [f"Model: {ctx.model.name}", f"Adapter: {ctx.model.active_adapter or 'base'}"]
    count = getattr(ctx.knowledge, "count", None)
    if count is not None:
        try:
            parts.append(f"Knowledge: {await count()} chunks")
        except Exception as exc:
            parts.append(f"Knowledge: unavailable ({exc})")
    mstats = ctx.model.stats()
    parts.append(f"Queue: {mstats.get('queue', 0)} waiting, {mstats.get('running', 0)} running")
    parts.append(f"Conversations: {stats.conversations}, messages: {stats.messages}, "
                 f"users: {stats.users}")
    runs = await ctx.store.runs(1)
    if runs:
        r = runs[0]
        parts.append(f"Last training run: #{r.id} {r.status} {r.version or ''} "
                     f"{r.summary}".rstrip())
    else:
        parts.append("Last training run: none")
    return "\n".join(parts)


NO_LEARNING = CommandResult("Training is not enabled in this process.", ok=False)


async def retrain(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    learning = ctx.learning
    if learning is None:
        return NO_LEARNING
    if learning.running:
        return CommandResult("A training run is already in progress.", ok=False)

    async def run_and_report() -> None:
        try:
            result = await learning.retrain("admin")
            text, files = result.text, result.files
        except Exception as exc:  # a failed run never takes the bot down
            log.exception("training cycle failed")
            text, files = f"Training failed: {exc}", []
        await ctx.notify_admins(text, files)

    ctx.spawn(run_and_report())
    return CommandResult("Started a learning cycle; I'll report the result here.")


async def rollback(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    if ctx.learning is None:
        return NO_LEARNING
    return CommandResult(await ctx.learning.rollback(args or None))


async def adapters(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    if ctx.learning is None:
        return NO_LEARNING
    return CommandResult(ctx.learning.adapters_text() or "No adapters trained yet.")


async def probe(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    if ctx.learning is None:
        return NO_LEARNING
    return CommandResult(ctx.learning.probe(args))


async def ingest(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    kb = ctx.knowledge
    ingest_bytes = getattr(kb, "ingest_bytes", None)
    if ingest_bytes is None:
        return CommandResult("The knowledge base is not enabled.", ok=False)
    if not inc.attachments:
        return CommandResult("Usage: send a document with /ingest as its caption, or reply "
                             "/ingest to a document.", ok=False)
    limit = int(ctx.cfg.rag.max_file_mb * 1024 * 1024)
    lines = []
    for att in inc.attachments:
        if att.problem:
            lines.append(f"skipped: {att.name} ({att.problem})")
            continue
        if att.size > limit:
            lines.append(f"skipped: {att.name} (too large: {att.size:,} bytes, the limit is "
                         f"{limit:,})")
            continue
        try:
            data = await att.fetch()
            res = await ingest_bytes(att.name, data, by=f"{inc.platform}:{inc.user_id}")
            lines.append(res.line())
        except Exception as exc:
            log.exception("ingest of %s failed", att.name)
            lines.append(f"skipped: {att.name} (could not read it: {exc})")
    return CommandResult("\n".join(lines))
