"""The platform-neutral core: one message's path, and the door every command goes through.

A platform turns an event into an :class:`Incoming` and gives :meth:`Core.handle` a
:class:`Renderer`. One message's path: clean the text → rate limit (not for admins and the
terminal's operator) → moderation → (per chat and
user, one at a time) store the user turn, committed before generation → history → retrieve →
prompt → stream into the renderer → store the answer with its sources. Commands go through
:meth:`Core.command` (the table in :mod:`bot.core.commands`). Every platform gets the same
behaviour; per-chat state is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bot.core import commands, handlers, trust
from bot.core.bounded import KeyedLocks
from bot.core.config import CoreSettings
from bot.core.context import Learning
from bot.core.errors import USER_ERRORS
from bot.core.limits import RateLimiter
from bot.core.messages import CommandResult, DeliveryReport, Incoming, Notifier, Renderer, Reply
from bot.core.metrics import Metrics
from bot.core.moderation import Guards, build_guard
from bot.core.shutdown import RESTART_NOTICE, Halt, Halted
from bot.core.text import pseudonym
from data.store import Store
from llm.base import ChatMessage, ChatModel, StreamInfo
from llm.errors import BusyError
from llm.prompt import build_messages, fit_messages_off_loop
from rag.base import KnowledgeBase, Passage, Retriever, citations, format_context

log = logging.getLogger("nightowl.core")

EMPTY_REPLY = "Please send some text — I read text messages and documents."
MODERATED_REPLY = "I can't help with that message."
FAILED_REPLY = "Sorry, something went wrong while answering. Please try again."
MAX_CHATS = 10_000  # per-chat locks kept (idle ones beyond this are dropped)
RESTART_APOLOGY = ("Sorry, I restarted before I could answer your message. Please send it again "
                   "if you still need an answer.")


def user_hash(inc: Incoming) -> str:
    """A short stable pseudonym for logs: never the raw platform user id."""
    return pseudonym(inc.platform, inc.user_id)


class Core:
    """Owns the conversation flow and runs the commands. Construct once; share across platforms."""

    def __init__(self, cfg: CoreSettings, store: Store, model: ChatModel,
                 knowledge: KnowledgeBase | Retriever | None = None,
                 learning: Learning | None = None, *, guard: Guards | None = None,
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
        # one lock per (platform, chat, user): a user's messages are answered in order
        self.locks: KeyedLocks[tuple[str, str, str]] = KeyedLocks(MAX_CHATS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.halt = Halt()

    # ---- wiring -----------------------------------------------------------------------------
    def add_admin_notifier(self, notifier: Notifier) -> None:
        """Platforms register a function that messages their admins (retrain reports)."""
        self._notifiers.append(notifier)

    async def notify_admins(self, text: str, files: list[Path] | None = None) -> None:
        for notify in list(self._notifiers):
            try:
                await notify(text, files or [])
            except Exception:  # one platform failing must not stop the others
                log.exception("admin notification failed")

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; :meth:`wait_background` waits for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_background(self) -> None:
        """Wait for background tasks (retrain) — used at shutdown and by tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def redact(self, text: str) -> str:
        """Clean user text: lone surrogates become U+FFFD; configured secrets are replaced."""
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    # ---- one message ------------------------------------------------------------------------
    async def handle(self, inc: Incoming, renderer: Renderer) -> Reply:
        """Answer one user message: store it, retrieve, prompt, stream, store the answer."""
        text = self.redact(inc.text).strip()
        if not text:
            return await self._refuse(inc, renderer, EMPTY_REPLY, "empty")
        user_key = f"{inc.platform}:{inc.user_id}"
        limited = None if inc.is_admin else self.limiter.check(user_key,
                                                               f"{inc.platform}:{inc.chat_id}")
        if limited:
            return await self._refuse(inc, renderer, limited, "rate_limited")
        blocked = await self.guard.screen(text)
        if blocked:
            log.info("message refused by moderation", extra={"event": "moderation",
                                                              "reason": blocked})
            return await self._refuse(inc, renderer, MODERATED_REPLY, "moderated")
        if inc.is_admin:  # the operator and admins are not rate-limited
            return await self._handle(inc, renderer, text)
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
        async with self.locks.hold((inc.platform, inc.chat_id, inc.user_id)):
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
            fitted = await fit_messages_off_loop(messages, self.model.count_tokens,
                                                 max(budget, 64))
            kept = len(fitted.messages) - 2
            if fitted.dropped_history:
                notices.append(f"⚠️ used only the last {kept} messages of our conversation.")
            if fitted.truncated_user:
                notices.append("⚠️ your message was too long for the model; I read only its "
                               "beginning.")
            info = StreamInfo()
            answer = await self.halt.run(self._generate(fitted.messages, renderer, info))
            answer = answer.strip() or "(no answer)"
        except Halted:  # stopping: the question stays pending and is answered after the restart
            return await self._halted(renderer)
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
            reply = Reply(FAILED_REPLY, feedback=False)
            await renderer.finish(reply)
            return reply
        latency = time.monotonic() - started
        self.metrics.requests.labels(platform, "ok").inc()
        self.metrics.latency.labels(platform).observe(latency)
        self.metrics.tokens.inc(info.completion_tokens)
        sources = [p.to_dict() for p in passages]
        aid = await self._store_answer(qid, conv, answer, info, latency, sources,
                                       fitted.dropped_history)
        full = answer
        if passages:
            full += "\n\nSources:\n" + citations(passages)
        if notices:
            full += "\n\n" + "\n".join(notices)
        reply = Reply(full, answer_id=aid, sources=sources, notices=notices, model=self.model.name,
                      adapter=info.adapter, latency_s=latency, answer=answer,
                      feedback=aid is not None)
        await renderer.finish(reply)
        if aid is not None:
            await self._record_delivery(renderer, aid, platform, chat_id)
        log.info("answered", extra={"event": "answer", "platform": platform, "chat": chat_id,
                                    "user": user,
                                    "answer_id": aid, "latency_s": round(latency, 3),
                                    "adapter": info.adapter, "tokens": info.completion_tokens})
        return reply

    async def _generate(self, messages: Sequence[ChatMessage], renderer: Renderer,
                        info: StreamInfo) -> str:
        answer = ""
        async for delta in self.model.stream(messages, self.cfg.model.gen_params(), info=info):
            answer += delta
            await renderer.update(answer.lstrip())
        return answer

    async def _halted(self, renderer: Renderer) -> Reply:
        reply = Reply(RESTART_NOTICE, feedback=False)
        try:  # best effort, bounded: the platform may be going away too
            await asyncio.wait_for(renderer.finish(reply), 3.0)
        except Exception:
            log.warning("could not tell the user that their question waits for the restart")
        return reply

    async def shutdown(self, grace_s: float) -> None:
        """Stop in bounded time: training in the background is cancelled (its child is killed),
        answers in progress get ``grace_s`` to finish, the rest stay pending for recovery."""
        self.halt.begin()
        for task in list(self._tasks):
            task.cancel()
        await self.halt.drain(grace_s)
        await self.wait_background()

    async def _store_answer(self, qid: int, conv: int, answer: str, info: StreamInfo,
                            latency: float, sources: list[dict[str, Any]],
                            dropped_history: int) -> int | None:
        """The streamed answer's id, or None when storing it failed: it is still shown (without
        👍/👎) and its question is marked failed, so a restart does not answer it twice."""
        try:
            return await self.store.answer(qid, conv, answer, model=self.model.name,
                                           adapter=info.adapter, latency_s=latency,
                                           sources=sources, dropped_history=dropped_history)
        except Exception:
            log.exception("storing the answer to message %s failed; it is shown unsaved", qid)
        try:
            await self.store.set_message_status(qid, "failed")
        except Exception:
            log.exception("could not mark message %s failed either", qid)
        return None

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

    async def _retrieve(self, text: str) -> list[Passage]:
        if self.knowledge is None or not self.cfg.rag.enabled:
            return []
        try:
            return await self.knowledge.search(text, self.cfg.rag.top_k)
        except Exception:
            log.exception("retrieval failed; answering without knowledge")
            return []

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
        for pending in await self.store.pending_messages():
            msg, plat, chat_id, user_id = (pending.message, pending.platform, pending.chat_id,
                                           pending.user_id)
            if plat != platform:
                continue
            if self.halt.stopping:  # the rest stays pending for the next start
                break
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
            async with self.locks.hold((plat, chat_id, user_id)):
                await self._answer(msg.id, msg.conversation_id, msg.text, renderer, [], plat,
                                   chat_id)
        return handled

    # ---- commands ---------------------------------------------------------------------------
    async def command(self, inc: Incoming, name: str, args: str = "") -> CommandResult:
        """Run one command of the table for any platform; admin ones are checked and audited."""
        name = name.lower().lstrip("/")
        args = self.redact(args).strip()
        cmd = commands.BY_NAME.get(name)
        if cmd is None:
            return CommandResult(f"Unknown command /{name}. Send /help for the list.", ok=False)
        if not cmd.admin:
            return await cmd.handler(self, inc, args)
        if not inc.is_admin:
            await self.store.audit(inc.platform, inc.user_id, name, args, False, "refused")
            return CommandResult(f"/{name} is for admins only.", ok=False)
        try:
            result = await cmd.handler(self, inc, args)
        except USER_ERRORS as exc:
            result = CommandResult(str(exc), ok=False)
        except Exception as exc:  # e.g. OSError from a full disk: audited, then raised
            try:
                await self.store.audit(inc.platform, inc.user_id, name, args, True,
                                       f"failed: {type(exc).__name__}")
            except Exception:
                log.exception("could not audit the failed /%s", name)
            raise
        await self.store.audit(inc.platform, inc.user_id, name, args, True,
                               result.text.splitlines()[0] if result.text else "")
        return result

    async def feedback(self, inc: Incoming, answer_id: int, value: int) -> CommandResult:
        """Record 👍 (1) or 👎 (-1) on an answer (the platforms' buttons): its asker or an admin
        only, whatever the platform says about the message (``bot.core.trust``)."""
        return await trust.feedback(self, inc, answer_id, value)

    async def forget(self, inc: Incoming) -> CommandResult:
        """Delete everything stored about this user (after the platform's confirmation), holding
        the user's lock in every chat they talk in, so no answer of theirs is in flight."""
        user = await self.store.get_user(inc.platform, inc.user_id)
        chats = await self.store.user_chats(user.id) if user is not None else []
        async with contextlib.AsyncExitStack() as held:
            for chat in sorted({*chats, str(inc.chat_id)}):  # one order: no deadlock
                await held.enter_async_context(self.locks.hold((inc.platform, chat,
                                                                str(inc.user_id))))
            return await handlers.forget(self, inc)
