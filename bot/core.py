"""The platform-neutral conversation core: one message's path, and every command.

Adapters turn platform events into :class:`Incoming` and render what the core gives back; the
core stores, retrieves, prompts, streams and records. Every platform gets the same behaviour.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from bot.config import Config
from bot.errors import USER_ERRORS
from bot.limits import RateLimiter
from bot.messages import CommandResult, DeliveryReport, Incoming, Notifier, Renderer, Reply
from bot.metrics import Metrics
from bot.moderation import Guard, build_guard
from data.store import Store
from llm.base import ChatModel, GenParams, StreamInfo
from llm.errors import BusyError
from llm.prompt import build_messages, fit_messages
from rag.base import KnowledgeBase, Passage, Retriever, citations, format_context

log = logging.getLogger("nightowl.core")

HELP = """NightOwl answers your messages from its knowledge base and learns from your feedback.
/new - start a fresh conversation
/sources - show the sources of the last answer
/good, /bad - rate the last answer (or use the 👍/👎 buttons)
/correct TEXT - give the right answer to the last question (used for training)
/optout, /optin - exclude or include your conversations in training
/forget - delete everything stored about you
Admins: /status, /retrain, /rollback [VERSION], /adapters, /ingest, /probe add|list|remove"""

ADMIN_COMMANDS = frozenset({"status", "retrain", "rollback", "adapters", "ingest", "probe"})
USER_COMMANDS = frozenset({"start", "help", "new", "sources", "good", "bad", "correct", "optout",
                           "optin", "forget"})
EMPTY_REPLY = "Please send some text — I read text messages and documents."
RESTART_APOLOGY = ("Sorry, I restarted before I could answer your message. Please send it again "
                   "if you still need an answer.")


def user_hash(inc: Incoming) -> str:
    """A short stable pseudonym for logs: never the raw platform user id."""
    digest = hashlib.sha256(f"{inc.platform}:{inc.user_id}".encode()).hexdigest()
    return digest[:12]


class Outcome(Protocol):
    """A retrain's report (``training.service.RetrainOutcome``)."""

    text: str
    ok: bool
    files: list[Path]


class Learning(Protocol):
    """What the core needs from training/ (implemented by training.service.LearningService)."""

    @property
    def running(self) -> bool: ...

    async def retrain(self, trigger: str = "manual") -> Outcome: ...

    async def rollback(self, version: str | None) -> str: ...

    def adapters_text(self) -> str: ...

    def status_line(self) -> str: ...

    def probe(self, args: str) -> str: ...

    async def purge_texts(self, texts: list[str]) -> int:
        """/forget: drop a user's lines from dataset files on disk; returns lines removed."""
        ...


class Core:
    """Owns the conversation flow. Construct once; share across platforms."""

    def __init__(self, cfg: Config, store: Store, model: ChatModel,
                 knowledge: KnowledgeBase | Retriever | None = None,
                 learning: Learning | None = None, *, guard: Guard | None = None,
                 limiter: RateLimiter | None = None, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.model = model
        self.knowledge = knowledge
        self.learning = learning
        self.guard = guard if guard is not None else build_guard(cfg.moderation)
        self.limiter = limiter if limiter is not None else RateLimiter(cfg.limits)
        self.metrics = metrics if metrics is not None else Metrics()
        self._secrets = cfg.secret_values()
        self._notifiers: list[Notifier] = []
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- wiring -----------------------------------------------------------------------
    def add_admin_notifier(self, notifier: Notifier) -> None:
        """Platforms register a function that messages their admins (retrain reports)."""
        self._notifiers.append(notifier)

    async def notify_admins(self, text: str, files: list[Path] | None = None) -> None:
        for notify in list(self._notifiers):
            try:
                await notify(text, files or [])
            except Exception:  # one platform failing must not stop the others
                log.exception("admin notification failed")

    def redact(self, text: str) -> str:
        """Clean user text: lone surrogates become U+FFFD; configured secrets are replaced."""
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def params(self) -> GenParams:
        return self.cfg.model.gen_params()

    # ---- one message -----------------------------------------------------------------------
    async def handle(self, inc: Incoming, renderer: Renderer) -> Reply:
        """Answer one user message: store it, retrieve, prompt, stream, store the answer."""
        text = self.redact(inc.text).strip()
        if not text:
            return await self._refuse(inc, renderer, EMPTY_REPLY, "empty")
        user_key = f"{inc.platform}:{inc.user_id}"
        limited = self.limiter.check(user_key, f"{inc.platform}:{inc.chat_id}")
        if limited:
            return await self._refuse(inc, renderer, limited, "rate_limited")
        blocked = self.guard.check(text)
        if blocked:
            log.info("message refused by moderation", extra={"event": "moderation",
                                                              "reason": blocked})
            return await self._refuse(inc, renderer, "I can't help with that message.",
                                      "moderated")
        self.limiter.begin(user_key)
        try:
            return await self._handle(inc, renderer, text)
        finally:
            self.limiter.end(user_key)

    async def _refuse(self, inc: Incoming, renderer: Renderer, text: str, outcome: str) -> Reply:
        self.metrics.requests.labels(inc.platform, outcome).inc()
        reply = Reply(text, feedback=False)
        await renderer.finish(reply)
        return reply

    async def _handle(self, inc: Incoming, renderer: Renderer, text: str) -> Reply:
        notices: list[str] = []
        limit = self.cfg.chat.max_message_chars
        if len(text) > limit:
            notices.append(f"⚠️ your message was {len(text):,} characters; I read only the "
                           f"first {limit:,}.")
            text = text[:limit]
        key = (inc.platform, inc.chat_id, inc.user_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if inc.message_id is not None:
                seen = await self.store.find_by_platform_id(inc.platform, inc.chat_id,
                                                            inc.message_id)
                if seen is not None and seen.role == "user":
                    # redelivered after a crash: answered (or recovered) once, never twice
                    log.info("ignoring redelivered message %s", inc.message_id)
                    return Reply("", feedback=False)
            user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
            conv = await self.store.active_conversation(user.id, inc.platform, inc.chat_id)
            qid = await self.store.add_message(conv, "user", text, status="pending",
                                               platform_message_id=inc.message_id)
            return await self._answer(qid, conv, text, renderer, notices, inc.platform,
                                      inc.chat_id, user_hash(inc))

    async def _answer(self, qid: int, conv: int, text: str, renderer: Renderer,
                      notices: list[str], platform: str, chat_id: str,
                      user: str = "") -> Reply:
        started = time.monotonic()
        try:
            await renderer.start()
            history = await self.store.history(conv, self.cfg.chat.history_messages, before_id=qid)
            passages = await self._retrieve(text)
            context = format_context(passages) if passages else None
            messages = build_messages(self.cfg.model.system_prompt, context,
                                      [{"role": m.role, "content": m.text} for m in history],
                                      text)
            budget = self.model.context_length - self.cfg.model.max_new_tokens
            fitted = fit_messages(messages, self.model.count_tokens, max(budget, 64))
            kept = len(fitted.messages) - 2
            if fitted.dropped_history:
                notices.append(f"⚠️ used only the last {kept} messages of our conversation.")
            if fitted.truncated_user:
                notices.append("⚠️ your message was too long for the model; I read only its "
                               "beginning.")
            info = StreamInfo()
            answer = ""
            async for delta in self.model.stream(fitted.messages, self.params(), info=info):
                answer += delta
                await renderer.update(answer.lstrip())
            answer = answer.strip() or "(no answer)"
        except asyncio.CancelledError:
            await self.store.set_message_status(qid, "failed")
            raise
        except BusyError as exc:
            await self.store.set_message_status(qid, "failed")
            self.metrics.requests.labels(platform, "busy").inc()
            reply = Reply(f"⏳ {exc}", feedback=False)
            await renderer.finish(reply)
            return reply
        except Exception:
            log.exception("answering message %s failed", qid)
            await self.store.set_message_status(qid, "failed")
            self.metrics.requests.labels(platform, "error").inc()
            reply = Reply("Sorry, something went wrong while answering. Please try again.",
                          feedback=False)
            await renderer.finish(reply)
            return reply
        latency = time.monotonic() - started
        self.metrics.requests.labels(platform, "ok").inc()
        self.metrics.latency.labels(platform).observe(latency)
        self.metrics.tokens.inc(info.completion_tokens)
        sources = [p.to_dict() for p in passages]
        aid = await self.store.answer(qid, conv, answer, model=self.model.name,
                                      adapter=info.adapter, latency_s=latency, sources=sources,
                                      dropped_history=fitted.dropped_history)
        full = answer
        if passages:
            full += "\n\nSources:\n" + citations(passages)
        if notices:
            full += "\n\n" + "\n".join(notices)
        reply = Reply(full, answer_id=aid, sources=sources, notices=notices, model=self.model.name,
                      adapter=info.adapter, latency_s=latency, answer=answer)
        await renderer.finish(reply)
        await self._record_delivery(renderer, aid, platform, chat_id)
        log.info("answered", extra={"event": "answer", "platform": platform, "chat": chat_id,
                                    "user": user,
                                    "answer_id": aid, "latency_s": round(latency, 3),
                                    "adapter": info.adapter, "tokens": info.completion_tokens})
        return reply

    async def _record_delivery(self, renderer: Renderer, answer_id: int, platform: str,
                               chat_id: str) -> None:
        """Store the platform ids of the answer's messages so replies to them find it."""
        if not isinstance(renderer, DeliveryReport):
            return
        try:
            ids = renderer.platform_message_ids()
            if ids:
                await self.store.add_message_refs(answer_id, platform, chat_id, ids)
        except Exception:
            log.exception("could not record the platform ids of answer %s", answer_id)

    async def mark_blocked(self, platform: str, user_id: str, blocked: bool = True) -> None:
        """The user blocked the bot (Telegram Forbidden) or wrote again (unblocked)."""
        user = await self.store.get_user(platform, user_id)
        if user is not None:
            await self.store.set_blocked(user.id, blocked)

    async def recover_pending(self, platform: str,
                              renderer_for: Callable[[str, str], Renderer]) -> int:
        """Answer (or apologise for) messages stored but never answered before a restart.

        ``renderer_for(chat_id, user_id)`` gives a renderer that sends into that chat. Messages
        younger than ``[chat] recover_max_age_s`` are answered; older ones get an apology.
        Each pending message is handled once: it leaves the 'pending' state either way.
        """
        handled = 0
        for msg, plat, chat_id, user_id in await self.store.pending_messages():
            if plat != platform:
                continue
            handled += 1
            renderer = renderer_for(chat_id, user_id)
            age = time.time() - msg.created_at
            if age > self.cfg.chat.recover_max_age_s:
                await self.store.set_message_status(msg.id, "failed")
                try:
                    await renderer.finish(Reply(RESTART_APOLOGY, feedback=False))
                except Exception:
                    log.exception("could not send the restart apology to %s", chat_id)
                continue
            key = (plat, chat_id, user_id)
            async with self._locks.setdefault(key, asyncio.Lock()):
                await self._answer(msg.id, msg.conversation_id, msg.text, renderer, [], plat,
                                   chat_id)
        return handled

    async def _retrieve(self, text: str) -> list[Passage]:
        if self.knowledge is None or not self.cfg.rag.enabled:
            return []
        try:
            return await self.knowledge.search(text, self.cfg.rag.top_k)
        except Exception:
            log.exception("retrieval failed; answering without knowledge")
            return []

    # ---- commands ----------------------------------------------------------------------------
    async def command(self, inc: Incoming, name: str, args: str = "") -> CommandResult:
        """Run one slash command for any platform. Admin commands are checked and audited."""
        name = name.lower().lstrip("/")
        args = self.redact(args).strip()
        if name in ADMIN_COMMANDS:
            if not inc.is_admin:
                await self.store.audit(inc.platform, inc.user_id, name, args, False, "refused")
                return CommandResult(f"/{name} is for admins only.", ok=False)
            try:
                result = await self._admin(inc, name, args)
            except USER_ERRORS as exc:
                result = CommandResult(str(exc), ok=False)
            await self.store.audit(inc.platform, inc.user_id, name, args, True,
                                   result.text.splitlines()[0] if result.text else "")
            return result
        handler: Callable[[Incoming, str], Awaitable[CommandResult]] | None = {
            "start": self._help, "help": self._help, "new": self._new, "sources": self._sources,
            "good": self._good, "bad": self._bad, "correct": self._correct,
            "optout": self._optout, "optin": self._optin, "forget": self._forget_request,
        }.get(name)
        if handler is None:
            return CommandResult(f"Unknown command /{name}. Send /help for the list.", ok=False)
        return await handler(inc, args)

    async def _help(self, inc: Incoming, args: str) -> CommandResult:
        return CommandResult(HELP)

    async def _conv(self, inc: Incoming) -> tuple[int, int]:
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        return user.id, await self.store.active_conversation(user.id, inc.platform, inc.chat_id)

    async def _new(self, inc: Incoming, args: str) -> CommandResult:
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        await self.store.end_conversation(user.id, inc.platform, inc.chat_id)
        return CommandResult("Started a new conversation. Earlier messages are no longer used.")

    async def _target_answer(self, inc: Incoming) -> int | None:
        """The answer a command refers to: the one replied to, else the last in this chat."""
        if inc.reply_to_message_id:
            msg = await self.store.find_by_platform_id(inc.platform, inc.chat_id,
                                                       inc.reply_to_message_id)
            if msg is not None and msg.role == "assistant":
                return msg.id
        _, conv = await self._conv(inc)
        last = await self.store.last_answer(conv)
        return last.id if last else None

    async def _sources(self, inc: Incoming, args: str) -> CommandResult:
        aid = await self._target_answer(inc)
        msg = await self.store.get_message(aid) if aid else None
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

    async def feedback(self, inc: Incoming, answer_id: int, value: int) -> CommandResult:
        """Record 👍 (1) or 👎 (-1) on an answer; pressing again changes it."""
        msg = await self.store.get_message(answer_id)
        if msg is None or msg.role != "assistant":
            return CommandResult("That answer no longer exists.", ok=False)
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        await self.store.set_feedback(answer_id, user.id, value)
        return CommandResult("Thanks — recorded 👍." if value > 0 else
                             "Thanks — recorded 👎. Use /correct TEXT to give the right answer.")

    async def _rate(self, inc: Incoming, value: int) -> CommandResult:
        aid = await self._target_answer(inc)
        if aid is None:
            return CommandResult("There is no answer to rate yet.", ok=False)
        return await self.feedback(inc, aid, value)

    async def _good(self, inc: Incoming, args: str) -> CommandResult:
        return await self._rate(inc, 1)

    async def _bad(self, inc: Incoming, args: str) -> CommandResult:
        return await self._rate(inc, -1)

    async def _correct(self, inc: Incoming, args: str) -> CommandResult:
        if not args:
            return CommandResult("Usage: /correct THE RIGHT ANSWER (reply to an answer, or it "
                                 "applies to the last one).", ok=False)
        aid = await self._target_answer(inc)
        if aid is None:
            return CommandResult("There is no answer to correct yet.", ok=False)
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        await self.store.add_correction(aid, user.id, args)
        return CommandResult("Thanks — I'll learn this correction in the next training run.")

    async def _optout(self, inc: Incoming, args: str) -> CommandResult:
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        await self.store.set_opted_out(user.id, True)
        return CommandResult("Done: your conversations will not be used for training. "
                             "/optin to undo.")

    async def _optin(self, inc: Incoming, args: str) -> CommandResult:
        user = await self.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
        await self.store.set_opted_out(user.id, False)
        return CommandResult("Done: your conversations may be used for training again.")

    async def _forget_request(self, inc: Incoming, args: str) -> CommandResult:
        return CommandResult("This deletes all your messages, feedback and corrections. "
                             "Are you sure?", confirm="forget")

    async def forget(self, inc: Incoming) -> CommandResult:
        """Delete everything stored about this user (after the adapter's confirmation)."""
        user = await self.store.get_user(inc.platform, inc.user_id)
        if user is None:
            return CommandResult("There is nothing stored about you.")
        texts = await self.store.user_texts(user.id)
        counts = await self.store.forget_user(user.id)
        if self.learning is not None:
            try:
                await self.learning.purge_texts(texts)
            except Exception:
                log.exception("could not purge dataset files of a forgotten user")
        uploads: list[str] = []
        remove = getattr(self.knowledge, "remove_by_uploader", None)
        if remove is not None:
            try:
                uploads = list(await remove(f"{inc.platform}:{inc.user_id}"))
            except Exception:
                log.exception("could not remove the uploads of a forgotten user")
        note = f"\nRemoved {len(uploads)} uploaded document(s)." if uploads else ""
        if self.learning is not None and self.learning.adapters_text().strip():
            note += ("\nAdapters trained before today may still reflect your past "
                     "conversations; an admin can retrain without them.")
        return CommandResult(f"Deleted {counts.messages} messages, {counts.feedback} "
                             f"ratings and {counts.corrections} corrections.{note}")

    # ---- admin -------------------------------------------------------------------------------
    async def _admin(self, inc: Incoming, name: str, args: str) -> CommandResult:
        if name == "status":
            return CommandResult(await self.status_text())
        if name == "ingest":
            return await self._ingest(inc)
        if self.learning is None:
            return CommandResult("Training is not enabled in this process.", ok=False)
        if name == "retrain":
            if self.learning.running:
                return CommandResult("A training run is already in progress.", ok=False)
            task = asyncio.create_task(self._retrain_and_report())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return CommandResult("Started a learning cycle; I'll report the result here.")
        if name == "rollback":
            return CommandResult(await self.learning.rollback(args or None))
        if name == "adapters":
            return CommandResult(self.learning.adapters_text() or "No adapters trained yet.")
        if name == "probe":
            return CommandResult(self.learning.probe(args))
        return CommandResult(f"Unknown admin command /{name}.", ok=False)

    async def _retrain_and_report(self) -> None:
        assert self.learning is not None
        try:
            result = await self.learning.retrain("admin")
            text, files = result.text, result.files
        except Exception as exc:  # a failed run never takes the bot down
            log.exception("training cycle failed")
            text, files = f"Training failed: {exc}", []
        await self.notify_admins(text, files)

    async def wait_background(self) -> None:
        """Wait for background tasks (retrain) — used at shutdown and by tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _ingest(self, inc: Incoming) -> CommandResult:
        kb = self.knowledge
        if kb is None or not hasattr(kb, "ingest_bytes"):
            return CommandResult("The knowledge base is not enabled.", ok=False)
        if not inc.attachments:
            return CommandResult("Usage: send a document with /ingest as its caption, or reply "
                                 "/ingest to a document.", ok=False)
        lines = []
        for att in inc.attachments:
            if att.problem:
                lines.append(f"skipped: {att.name} ({att.problem})")
                continue
            limit = int(self.cfg.rag.max_file_mb * 1024 * 1024)
            if att.size > limit:
                lines.append(f"skipped: {att.name} (too large: {att.size:,} bytes, the limit is "
                             f"{limit:,})")
                continue
            try:
                data = await att.fetch()
                res = await kb.ingest_bytes(att.name, data, by=f"{inc.platform}:{inc.user_id}")
                lines.append(res.line())
            except Exception as exc:
                log.exception("ingest of %s failed", att.name)
                lines.append(f"skipped: {att.name} (could not read it: {exc})")
        return CommandResult("\n".join(lines))

    async def status_text(self) -> str:
        stats = await self.store.stats()
        parts = [f"Model: {self.model.name}", f"Adapter: {self.model.active_adapter or 'base'}"]
        if self.knowledge is not None and hasattr(self.knowledge, "count"):
            try:
                parts.append(f"Knowledge: {await self.knowledge.count()} chunks")
            except Exception as exc:
                parts.append(f"Knowledge: unavailable ({exc})")
        mstats = self.model.stats()
        parts.append(f"Queue: {mstats.get('queue', 0)} waiting, {mstats.get('running', 0)} running")
        parts.append(f"Conversations: {stats.conversations}, messages: {stats.messages}, "
                     f"users: {stats.users}")
        runs = await self.store.runs(1)
        if runs:
            r = runs[0]
            parts.append(f"Last training run: #{r.id} {r.status} "
                         f"{r.version or ''} {r.summary}".rstrip())
        else:
            parts.append("Last training run: none")
        return "\n".join(parts)
