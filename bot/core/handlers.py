"""What the chat commands do: one handler per command of the table in :mod:`bot.core.commands`.

A handler gets the core (as :class:`CommandContext`), the message and the text after the
command's name; it returns a :class:`CommandResult` and raises only ``USER_ERRORS`` (shown to
the user). ``Core.command`` has already checked admin rights; it audits admin commands.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from bot.core.config import CoreSettings
from bot.core.messages import CommandResult, Incoming
from data.store import Store
from llm.base import ChatModel
from rag.base import KnowledgeBase, Retriever

log = logging.getLogger("nightowl.core")


class Outcome(Protocol):
    """A retrain's report (``training.service.RetrainOutcome``)."""

    text: str
    ok: bool
    files: list[Path]


class Learning(Protocol):
    """What the commands need from training/ (``training.service.LearningService``)."""

    @property
    def running(self) -> bool: ...

    async def retrain(self, trigger: str = "manual") -> Outcome: ...

    async def rollback(self, version: str | None) -> str: ...

    def adapters_text(self) -> str: ...

    def probe(self, args: str) -> str: ...

    async def purge_texts(self, texts: list[str]) -> int:
        """/forget: drop a user's lines from dataset files on disk; returns lines removed."""
        ...


class CommandContext(Protocol):
    """What a handler may use: the core's services (``bot.core.Core`` is one)."""

    @property
    def cfg(self) -> CoreSettings: ...

    @property
    def store(self) -> Store: ...

    @property
    def model(self) -> ChatModel: ...

    @property
    def knowledge(self) -> KnowledgeBase | Retriever | None: ...

    @property
    def learning(self) -> Learning | None: ...

    async def notify_admins(self, text: str, files: list[Path] | None = None) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (awaited at shutdown)."""
        ...


# ---- user commands --------------------------------------------------------------------------
async def new(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.end_conversation(user.id, inc.platform, inc.chat_id)
    return CommandResult("Started a new conversation. Earlier messages are no longer used.")


async def target_answer(ctx: CommandContext, inc: Incoming) -> int | None:
    """The answer a command refers to: the one replied to, else the last in this chat."""
    store = ctx.store
    if inc.reply_to_message_id:
        msg = await store.find_by_platform_id(inc.platform, inc.chat_id, inc.reply_to_message_id)
        if msg is not None and msg.role == "assistant":
            return msg.id
    user = await store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    last = await store.last_answer(await store.active_conversation(user.id, inc.platform,
                                                                   inc.chat_id))
    return last.id if last else None


async def sources(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    aid = await target_answer(ctx, inc)
    msg = await ctx.store.get_message(aid) if aid else None
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


async def feedback(ctx: CommandContext, inc: Incoming, answer_id: int,
                   value: int) -> CommandResult:
    """Record 👍 (1) or 👎 (-1) on an answer; pressing again changes it."""
    msg = await ctx.store.get_message(answer_id)
    if msg is None or msg.role != "assistant":
        return CommandResult("That answer no longer exists.", ok=False)
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.set_feedback(answer_id, user.id, value)
    return CommandResult("Thanks — recorded 👍." if value > 0 else
                         "Thanks — recorded 👎. Use /correct TEXT to give the right answer.")


async def _rate(ctx: CommandContext, inc: Incoming, value: int) -> CommandResult:
    aid = await target_answer(ctx, inc)
    if aid is None:
        return CommandResult("There is no answer to rate yet.", ok=False)
    return await feedback(ctx, inc, aid, value)


async def good(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return await _rate(ctx, inc, 1)


async def bad(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return await _rate(ctx, inc, -1)


async def correct(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    if not args:
        return CommandResult("Usage: /correct THE RIGHT ANSWER (reply to an answer, or it "
                             "applies to the last one).", ok=False)
    aid = await target_answer(ctx, inc)
    if aid is None:
        return CommandResult("There is no answer to correct yet.", ok=False)
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.add_correction(aid, user.id, args)
    return CommandResult("Thanks — I'll learn this correction in the next training run.")


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
    """Delete everything stored about this user (after the platform's confirmation)."""
    user = await ctx.store.get_user(inc.platform, inc.user_id)
    if user is None:
        return CommandResult("There is nothing stored about you.")
    texts = await ctx.store.user_texts(user.id)
    counts = await ctx.store.forget_user(user.id)
    if ctx.learning is not None:
        try:
            await ctx.learning.purge_texts(texts)
        except Exception:
            log.exception("could not purge dataset files of a forgotten user")
    uploads: list[str] = []
    remove = getattr(ctx.knowledge, "remove_by_uploader", None)
    if remove is not None:
        try:
            uploads = list(await remove(f"{inc.platform}:{inc.user_id}"))
        except Exception:
            log.exception("could not remove the uploads of a forgotten user")
    note = f"\nRemoved {len(uploads)} uploaded document(s)." if uploads else ""
    if ctx.learning is not None and ctx.learning.adapters_text().strip():
        note += ("\nAdapters trained before today may still reflect your past "
                 "conversations; an admin can retrain without them.")
    return CommandResult(f"Deleted {counts.messages} messages, {counts.feedback} "
                         f"ratings and {counts.corrections} corrections.{note}")


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
