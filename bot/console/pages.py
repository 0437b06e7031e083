"""The pages (GET): overview, conversations, review queue, training runs, compare, knowledge,
probes and audit. Handlers are thin: gather a view from the services, render a template."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

from aiohttp import web

from bot.console import canary, views
from bot.console.app import ConsoleState, session_of, state_of
from bot.console.compare import choices
from bot.console.render import page
from bot.console.services import knowledge_base
from bot.core.errors import USER_ERRORS
from data.insights import ConversationFilter, Insights
from data.rows import TrainingConversation
from training.dataset import DatasetReport, Example, build_examples
from training.probes import ProbeFile
from training.registry import Registry

PAGE_SIZE = 50
PROBLEMS: tuple[type[Exception], ...] = (*USER_ERRORS, OSError)
INTEGRITY_EVERY_S = 600.0


def routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", overview)
    router.add_get("/conversations", conversations)
    router.add_get(r"/conversations/{id:\d+}", conversation)
    router.add_get("/review", review)
    router.add_get("/review/export.jsonl", export)
    router.add_get("/training", training)
    router.add_get("/compare", compare)
    router.add_get("/knowledge", knowledge)
    router.add_get("/probes", probes)


def context(request: web.Request, title: str, **extra: Any) -> dict[str, Any]:
    state = state_of(request)
    session = session_of(request)
    return {"title": title, "path": request.path, "admin": session.admin,
            "csrf": state.sessions.csrf(session.nonce), "flashes": state.take_flashes(session),
            **extra}


async def _integrity_of(state: ConsoleState) -> str:
    """``PRAGMA integrity_check``, at most every 10 minutes (it reads the whole file)."""
    at, result = state.integrity
    if time.monotonic() - at > INTEGRITY_EVERY_S or not result:
        result = await state.core.store.integrity_check()
        state.integrity = (time.monotonic(), result)
    return result


async def overview(request: web.Request) -> web.Response:
    state = state_of(request)
    view = await views.overview(state.core, state.cfg, await _integrity_of(state))
    return page("overview.html", **context(request, "Overview", o=view,
                                           refresh=view.training_now))


def _day(value: str, end: bool = False) -> float | None:
    try:
        day = dt.datetime.strptime(value.strip(), "%Y-%m-%d")
    except ValueError:
        return None
    return (day + dt.timedelta(days=1 if end else 0)).timestamp()


async def conversations(request: web.Request) -> web.Response:
    state = state_of(request)
    q = request.query
    f = ConversationFilter(
        text=q.get("q", "")[:200], platform=q.get("platform", "")[:32],
        user=q.get("user", "")[:100], rating=q.get("rating", ""),
        adapter=q.get("adapter", "")[:32], since=_day(q.get("since", "")),
        until=_day(q.get("until", ""), end=True))
    try:
        offset = max(int(q.get("offset", "0")), 0)
    except ValueError:
        offset = 0
    insights = Insights(state.core.store)
    rows = await insights.search_conversations(f, limit=PAGE_SIZE + 1, offset=offset)
    return page("conversations.html", **context(
        request, "Conversations", rows=rows[:PAGE_SIZE], more=len(rows) > PAGE_SIZE,
        offset=offset, page_size=PAGE_SIZE,
        q={k: v for k, v in q.items() if k != "offset"},
        platforms=await insights.platforms()))


async def conversation(request: web.Request) -> web.Response:
    state = state_of(request)
    found = await Insights(state.core.store).conversation(int(request.match_info["id"]))
    if found is None:
        return page("error.html", 404, **context(request, "Not found",
                                                  message="There is no such conversation."))
    row, messages = found
    return page("conversation.html", **context(request, f"Conversation {row.id}", row=row,
                                               messages=messages))


async def _dataset(state: ConsoleState) -> tuple[list[Example], DatasetReport,
                                                 list[TrainingConversation]]:
    """What a training run would use now: the kept examples, the report (each drop with its
    reason) and the conversations it was built from."""
    convs = await state.core.store.training_conversations()
    examples, report = await asyncio.to_thread(build_examples, state.cfg, convs, now=time.time(),
                                               guard=state.core.guard)
    return examples, report, convs


async def review(request: web.Request) -> web.Response:
    state = state_of(request)
    everything = state.cfg.training.review == "admin"
    items = await state.core.store.pending_reviews(everything=everything, limit=200)
    learning = state.core.learning
    examples, report, convs = await _dataset(state)
    drops = views.dropped_answers(convs, report, await Insights(state.core.store)
                                  .opted_out_answers())
    kept = [{"kind": e.kind, "question": e.messages[-2]["content"] if len(e.messages) > 1
             else "", "answer": e.messages[-1]["content"], "answer_id": e.answer_id}
            for e in examples[-100:]]
    return page("review.html", **context(
        request, "Review queue", items=items, everything=everything,
        waiting=learning.waiting_candidate() if learning is not None else None,
        report=report.to_dict(), drops=drops, kept=kept, mode=state.cfg.training.review))


async def export(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    examples, _, _ = await _dataset(state)
    await state.audit(session_of(request).admin, "export", "dataset", True,
                      f"{len(examples)} examples")
    body = "".join(json.dumps(e.record(), ensure_ascii=False) + "\n" for e in examples)
    return web.Response(text=body, content_type="application/jsonl", charset="utf-8",
                        headers={"Content-Disposition":
                                 'attachment; filename="nightowl-dataset.jsonl"'})


async def training(request: web.Request) -> web.Response:
    state = state_of(request)
    learning = state.core.learning
    running = bool(learning is not None and learning.running) or (
        state.training is not None and not state.training.done())
    registry = Registry(state.cfg.storage.path)
    return page("training.html", **context(
        request, "Training runs", runs=await views.runs(state.core, state.cfg),
        enabled=learning is not None, running=running, refresh=running,
        waiting=learning.waiting_candidate() if learning is not None else None,
        versions=list(reversed(registry.versions())), active=registry.active() or "base",
        canary=state.core.model.canary, canary_text=canary.describe(
            state.core.model.canary, state.core.model.active_adapter),
        next_run=views.next_run(state.cfg)))


async def compare(request: web.Request) -> web.Response:
    state = state_of(request)
    return page("compare.html", **context(request, "Compare", choices=choices(state.cfg),
                                          prompt="", results=[], trial=None,
                                          selected={"active", "base"}, retrieval={"on", "off"}))


async def knowledge(request: web.Request) -> web.Response:
    state = state_of(request)
    kb = knowledge_base(state.core)
    question = request.query.get("q", "").strip()[:1000]
    passages: list[Any] = []
    problem = ""
    sources = []
    if kb is not None:
        sources = await kb.sources()
        if question:
            try:
                passages = await kb.search(question, state.cfg.rag.top_k)
            except PROBLEMS as exc:
                problem = str(exc)
    return page("knowledge.html", **context(
        request, "Knowledge", enabled=kb is not None, sources=sources, question=question,
        passages=passages, problem=problem, progress=state.reindex,
        refresh=state.reindex.running, max_mb=state.cfg.rag.max_file_mb))


async def probes(request: web.Request) -> web.Response:
    state = state_of(request)
    problem = ""
    try:
        found = ProbeFile(state.cfg.storage.path / "probes.json").load()
    except USER_ERRORS as exc:
        found, problem = [], str(exc)
    entries = await state.core.store.audit_log(200)
    return page("probes.html", **context(request, "Probes & audit", probes=found,
                                         problem=problem, audit=entries))
