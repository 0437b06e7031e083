"""The actions (POST): every state change the console can make, each audited.

Admin commands that exist in chat run through ``Core.command`` as the console admin (checked and
audited there, with platform ``console``); the rest (knowledge remove/reindex, blind votes,
exports) are audited here. Actions that retrain, promote, roll back, remove or reindex first
answer with a confirmation page (a form with ``confirm=yes``): no JavaScript is needed.
"Train now" is single-flight: while a run started here or elsewhere is in progress, another
request is refused, so a double click starts one run.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from bot.console import canary as canary_mod
from bot.console.app import ConsoleState, session_of, state_of
from bot.console.compare import Column, CompareError, answer_all, choices, stream_columns
from bot.console.pages import context
from bot.console.render import page, see_other
from bot.console.services import PLATFORM, admin_message, knowledge_base
from bot.core.messages import Incoming
from llm.errors import ModelError

log = logging.getLogger("nightowl.console")
MAX_COLUMNS = 6


def routes(router: web.UrlDispatcher) -> None:
    router.add_post("/review/decide", review_decide)
    router.add_post("/review/bulk", review_bulk)
    router.add_post("/training/train", train)
    router.add_post("/training/candidate", candidate)
    router.add_post("/training/rollback", rollback)
    router.add_post("/training/canary", canary)
    router.add_post("/compare", compare)
    router.add_post("/compare/stream", compare_stream)
    router.add_post("/compare/blind", blind)
    router.add_post("/compare/vote", vote)
    router.add_post("/knowledge/upload", upload)
    router.add_post("/knowledge/remove", kb_remove)
    router.add_post("/knowledge/reindex", kb_reindex)
    router.add_post("/probes/add", probe_add)
    router.add_post("/probes/remove", probe_remove)


def _field(form: MultiDictProxy[Any], name: str, limit: int = 4000) -> str:
    value = form.get(name, "")
    return value.strip()[:limit] if isinstance(value, str) else ""


async def _command(request: web.Request, name: str, args: str = "",
                   inc: Incoming | None = None) -> str:
    state = state_of(request)
    inc = inc or admin_message(session_of(request).admin)
    result = await state.core.command(inc, name, args)
    return result.text


def _done(request: web.Request, text: str, location: str) -> web.Response:
    state = state_of(request)
    for line in (text or "Done.").splitlines() or ["Done."]:
        state.flash(session_of(request), line)
    return see_other(location)


def _confirm(request: web.Request, form: MultiDictProxy[Any], question: str) -> web.Response | None:
    """The confirmation page, unless this form already says ``confirm=yes``."""
    if form.get("confirm") == "yes":
        return None
    fields = [(k, v) for k, v in form.items() if k not in ("csrf", "confirm")
              and isinstance(v, str)]
    return page("confirm.html", **context(request, "Confirm", question=question,
                                          action=request.path, fields=fields,
                                          back=request.headers.get("Referer", "/")))


# ---- review -----------------------------------------------------------------------------------
async def review_decide(request: web.Request) -> web.Response:
    form = await request.post()
    verb, key = _field(form, "verb"), _field(form, "key", 40)
    text = _field(form, "text") if verb == "edit" else ""  # the edit box rides along otherwise
    if verb not in ("approve", "reject", "edit"):
        return _done(request, "Choose approve, reject or edit.", "/review")
    return _done(request, await _command(request, "review", f"{verb} {key} {text}".strip()),
                 "/review")


async def review_bulk(request: web.Request) -> web.Response:
    form = await request.post()
    verb = _field(form, "verb")
    keys = [k.strip() for k in form.getall("key", []) if isinstance(k, str) and k.strip()]
    if verb not in ("approve", "reject") or not keys:
        return _done(request, "Select items, then approve or reject them.", "/review")
    ask = _confirm(request, form, f"{verb.capitalize()} {len(keys)} item(s): {', '.join(keys)}?")
    if ask is not None:
        return ask
    lines = [await _command(request, "review", f"{verb} {key[:40]}") for key in keys[:200]]
    return _done(request, "\n".join(lines), "/review")


# ---- training ---------------------------------------------------------------------------------
def _training_busy(state: ConsoleState) -> bool:
    learning = state.core.learning
    return bool(learning is not None and learning.running) or (
        state.training is not None and not state.training.done())


async def _train_and_report(state: ConsoleState, admin: str) -> None:
    learning = state.core.learning
    assert learning is not None
    try:
        outcome = await learning.retrain("console")
        text, files = outcome.text, outcome.files
    except Exception as exc:  # a failed run never takes the console down
        log.exception("training run started from the console failed")
        text, files = f"Training failed: {exc}", []
    await state.audit(admin, "retrain", "finished", True, text.splitlines()[0] if text else "")
    await state.core.notify_admins(text, files)


async def train(request: web.Request) -> web.Response:
    state = state_of(request)
    admin = session_of(request).admin
    form = await request.post()
    if state.core.learning is None:
        return _done(request, "Training is not enabled in this process.", "/training")
    ask = _confirm(request, form, "Start a training run now? It builds the dataset, trains an "
                   "adapter and promotes it only if the gate says it is better.")
    if ask is not None:
        return ask
    if _training_busy(state):
        await state.audit(admin, "retrain", "", False, "refused: a run is in progress")
        return _done(request, "A training run is already in progress.", "/training")
    state.training = state.spawn(_train_and_report(state, admin))
    await state.audit(admin, "retrain", "", True, "started")
    return _done(request, "Started a training run; this page follows it.", "/training")


async def candidate(request: web.Request) -> web.Response:
    form = await request.post()
    verb = _field(form, "verb")
    if verb not in ("approve", "reject"):
        return _done(request, "Choose approve or reject.", "/training")
    ask = _confirm(request, form, f"{verb.capitalize()} the candidate adapter waiting for "
                   "approval?")
    if ask is not None:
        return ask
    return _done(request, await _command(request, "review", f"{verb} candidate"), "/training")


async def rollback(request: web.Request) -> web.Response:
    form = await request.post()
    version = _field(form, "version", 20)
    ask = _confirm(request, form, f"Make {version or 'the previous adapter'} the active "
                   "adapter? Answers use it from the next message on.")
    if ask is not None:
        return ask
    return _done(request, await _command(request, "rollback", version), "/training")


async def canary(request: web.Request) -> web.Response:
    """Load a candidate as the canary and/or set its share (kept across restarts)."""
    state = state_of(request)
    admin = session_of(request).admin
    form = await request.post()
    version, raw = _field(form, "version", 20), _field(form, "share", 20)
    try:
        share = canary_mod.parse_share(raw)
    except ModelError as exc:
        await state.audit(admin, "canary", f"{version} {raw}".strip(), False, f"refused: {exc}")
        return _done(request, f"Not changed: {str(exc).rstrip('.')}.", "/training")
    who = version or state.core.model.canary.version or "the canary"
    active = state.core.model.active_adapter or "base"
    ask = _confirm(request, form, f"Let {who} answer {canary_mod.percent(share)} of the chats "
                   f"for the active adapter ({active})? It is kept across restarts."
                   if share > 0 else f"Stop the canary ({who} answers no chats)?")
    if ask is not None:
        return ask
    try:
        now = await canary_mod.set_canary(state.core, state.cfg, version, share)
    except ModelError as exc:
        await state.audit(admin, "canary", f"{version} {share}".strip(), False, f"refused: {exc}")
        return _done(request, f"Not changed: {str(exc).rstrip('.')}.", "/training")
    text = "Canary: " + canary_mod.describe(now, state.core.model.active_adapter) + "."
    await state.audit(admin, "canary", f"{version or now.version or ''} {share}".strip(), True,
                      text)
    return _done(request, text, "/training")


# ---- compare ----------------------------------------------------------------------------------
def _columns(request: web.Request, form: MultiDictProxy[Any]) -> list[Column]:
    known = set(choices(state_of(request).cfg))
    adapters = [a for a in form.getall("adapter", []) if isinstance(a, str) and a in known]
    modes = [m for m in form.getall("retrieval", []) if m in ("on", "off")] or ["on"]
    cols = [Column(a, m == "on") for a in dict.fromkeys(adapters) for m in dict.fromkeys(modes)]
    return cols[:MAX_COLUMNS]


async def _compare_input(request: web.Request) -> tuple[str, list[Column], MultiDictProxy[Any]]:
    form = await request.post()
    return _field(form, "prompt", 4000), _columns(request, form), form


def _compare_page(request: web.Request, form: MultiDictProxy[Any], prompt: str,
                  **extra: Any) -> web.Response:
    selected = {a for a in form.getall("adapter", []) if isinstance(a, str)}
    retrieval = {m for m in form.getall("retrieval", []) if isinstance(m, str)}
    ctx = {"choices": choices(state_of(request).cfg), "prompt": prompt, "results": [],
           "trial": None, "selected": selected, "retrieval": retrieval, **extra}
    return page("compare.html", **context(request, "Compare", **ctx))


async def compare(request: web.Request) -> web.Response:
    """Without JavaScript: every column answered, then the page."""
    prompt, columns, form = await _compare_input(request)
    if not prompt or not columns:
        state_of(request).flash(session_of(request), "Write a prompt and pick adapters.")
        return _compare_page(request, form, prompt)
    results = await answer_all(state_of(request).core, state_of(request).cfg, prompt, columns)
    await state_of(request).audit(session_of(request).admin, "compare",
                                  ", ".join(c.label for c in columns), True, prompt[:200])
    return _compare_page(request, form, prompt, results=results)


async def compare_stream(request: web.Request) -> web.StreamResponse:
    """With JavaScript: NDJSON events (``{"col", "delta"}`` ... ``{"col", "done"}``)."""
    state = state_of(request)
    prompt, columns, _ = await _compare_input(request)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
    await resp.prepare(request)
    if prompt and columns:
        await state.audit(session_of(request).admin, "compare",
                          ", ".join(c.label for c in columns), True, prompt[:200])
        async for event in stream_columns(state.core, state.cfg, prompt, columns):
            await resp.write((event.json() + "\n").encode("utf-8"))
    await resp.write_eof()
    return resp


async def blind(request: web.Request) -> web.Response:
    state = state_of(request)
    prompt, columns, form = await _compare_input(request)
    pair = [c for c in columns if c.retrieval] or columns
    if not prompt or len({c.adapter for c in pair}) < 2:
        state.flash(session_of(request), "A blind test needs a prompt and two different adapters.")
        return _compare_page(request, form, prompt)
    first = pair[0]
    second = next(c for c in pair if c.adapter != first.adapter)
    try:
        a, b = await answer_all(state.core, state.cfg, prompt, [first, second])
    except CompareError as exc:
        state.flash(session_of(request), str(exc))
        return _compare_page(request, form, prompt)
    trial = state.trials.create(prompt, a, b)
    return _compare_page(request, form, prompt, trial=trial)


async def vote(request: web.Request) -> web.Response:
    state = state_of(request)
    form = await request.post()
    admin = session_of(request).admin
    record = state.trials.vote(_field(form, "trial", 40), _field(form, "choice", 2), admin)
    if record is None:
        return _done(request, "That blind test was already voted on or has expired.", "/compare")
    summary = f"{record['chosen_adapter']} preferred over {record['rejected_adapter']}"
    await state.audit(admin, "compare vote", record["prompt"][:200], True, summary)
    return _done(request, f"Vote stored as a preference pair: {summary}.", "/compare")


# ---- knowledge --------------------------------------------------------------------------------
async def upload(request: web.Request) -> web.Response:
    """Each file through the knowledge base's ``ingest_bytes``: one result line per file, the
    very line ``nightowl ingest`` prints (added / unchanged / replaced / skipped and why)."""
    state = state_of(request)
    form = await request.post()
    kb = knowledge_base(state.core)
    if kb is None:
        return _done(request, "The knowledge base is not enabled.", "/knowledge")
    files = [f for f in form.getall("files", []) if isinstance(f, web.FileField) and f.filename]
    if not files:
        return _done(request, "Choose or drop one or more files first.", "/knowledge")
    admin = session_of(request).admin
    lines = []
    for f in files:
        try:
            result = await kb.ingest_bytes(f.filename, f.file.read(), by=f"{PLATFORM}:{admin}")
            lines.append(result.line())
        except Exception as exc:  # one bad file never stops the others
            log.exception("console upload of %s failed", f.filename)
            lines.append(f"skipped: {f.filename} (could not read it: {exc})")
    await state.audit(admin, "ingest", ", ".join(f.filename for f in files)[:500], True,
                      "; ".join(lines))
    return _done(request, "\n".join(lines), "/knowledge")


async def kb_remove(request: web.Request) -> web.Response:
    state = state_of(request)
    form = await request.post()
    source = _field(form, "source", 2000)
    kb = knowledge_base(state.core)
    if kb is None or not source:
        return _done(request, "The knowledge base is not enabled.", "/knowledge")
    ask = _confirm(request, form, f"Remove {source} and its chunks from the knowledge base?")
    if ask is not None:
        return ask
    removed = await kb.remove(source)
    text = f"removed: {source}" if removed else f"not found: {source}"
    await state.audit(session_of(request).admin, "kb remove", source, True, text)
    return _done(request, text, "/knowledge")


async def _reindex(state: ConsoleState, admin: str) -> None:
    kb = knowledge_base(state.core)
    progress = state.reindex

    def step(done: int, total: int) -> None:
        progress.done, progress.total = done, total

    try:
        count = await kb.reindex(step) if kb is not None else 0
        progress.message = f"Reindexed {count} chunks."
    except Exception as exc:
        log.exception("reindex from the console failed")
        progress.message = f"Reindex failed: {exc}"
    finally:
        progress.running = False
    await state.audit(admin, "kb reindex", "", True, progress.message)


async def kb_reindex(request: web.Request) -> web.Response:
    state = state_of(request)
    form = await request.post()
    if knowledge_base(state.core) is None:
        return _done(request, "The knowledge base is not enabled.", "/knowledge")
    ask = _confirm(request, form, "Re-embed every chunk of the knowledge base now?")
    if ask is not None:
        return ask
    if state.reindex.running:
        return _done(request, "A reindex is already running.", "/knowledge")
    state.reindex.running, state.reindex.done, state.reindex.message = True, 0, ""
    state.spawn(_reindex(state, session_of(request).admin))
    return _done(request, "Reindex started; this page shows its progress.", "/knowledge")


# ---- probes -----------------------------------------------------------------------------------
async def probe_add(request: web.Request) -> web.Response:
    form = await request.post()
    question, expected = _field(form, "question", 1000), _field(form, "expected", 1000)
    if "=>" in question:
        return _done(request, "The question cannot contain '=>'.", "/probes")
    return _done(request, await _command(request, "probe", f"add {question} => {expected}"),
                 "/probes")


async def probe_remove(request: web.Request) -> web.Response:
    form = await request.post()
    return _done(request, await _command(request, "probe", f"remove {_field(form, 'n', 10)}"),
                 "/probes")
