"""View models: what a page shows, gathered from the services into typed rows.

Nothing here writes. The training runs combine the store's run rows with the registry's
``meta.json`` of the version each run produced (loss curve, gate scores, speed, memory).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from bot.console.canary import describe
from bot.console.services import ConsoleCore, ConsoleSettings, knowledge_base
from bot.console.svg import loss_svg
from data.insights import Activity, Insights, OptedOutAnswer
from data.rows import TrainingConversation, TrainingRun
from training.dataset import DatasetReport
from training.registry import Registry

LOW_DISK_BYTES = 1024**3
DROP_REASONS = {  # training.dataset's reasons, as the review page says them
    "opted_out": "the user opted out of training",
    "thumbs_down": "👎 and no correction",
    "unrated": "not rated ([training] include_unrated_after_hours trains unrated answers)",
    "pending_review": "waits for a review decision (above)",
    "rejected": "rejected in review",
    "non_answer": "not an answer (empty or an error message)",
    "too_short": "too short ([training] min_chars)",
    "too_long": "too long ([training] max_chars)",
    "no_question": "no question before it",
    "moderated": "refused by moderation",
    "pii_in_answer": "the answer holds personal data: it would need a placeholder",
    "too_long_tokens": "too long in tokens even without history ([training] max_seq_len)",
    "duplicate": "duplicate of answer",
    "near_duplicate": "near-duplicate of answer",
}


@dataclass(frozen=True)
class DroppedAnswer:
    """One answer tonight's dataset leaves out, with the reason in words."""

    answer_id: int
    conversation_id: int
    reason: str  # training.dataset's key (or "opted_out")
    why: str
    question: str
    answer: str


def dropped_answers(convs: list[TrainingConversation], report: DatasetReport,
                    opted_out: list[OptedOutAnswer], limit: int = 200) -> list[DroppedAnswer]:
    """Every answer the dataset drops (newest first, at most ``limit``), with its texts."""
    texts: dict[int, tuple[str, str]] = {}
    for conv in convs:
        for prev, m in zip((None, *conv.messages), conv.messages, strict=False):
            if m.role == "assistant":
                question = prev.text if prev is not None and prev.role == "user" else ""
                texts[m.id] = (question, m.text)
    out = [DroppedAnswer(a.answer_id, a.conversation_id, "opted_out", DROP_REASONS["opted_out"],
                         a.question, a.answer) for a in opted_out]
    for d in report.drops:
        why = DROP_REASONS.get(d.reason, d.reason)
        if d.like is not None:
            why = f"{why} {d.like}"
        question, answer = texts.get(d.answer_id, ("", ""))
        out.append(DroppedAnswer(d.answer_id, d.conversation_id, d.reason, why, question, answer))
    out.sort(key=lambda d: -d.answer_id)
    return out[:limit]


@dataclass(frozen=True)
class GateRow:
    name: str
    candidate: str
    reference: str


@dataclass(frozen=True)
class RunView:
    run: TrainingRun
    status: str  # the run's status, "waiting" when its candidate waits for an admin
    duration_s: float | None
    training: dict[str, Any]
    dataset: dict[str, Any]
    gate: tuple[GateRow, ...]
    changed: tuple[dict[str, Any], ...]
    reasons: tuple[str, ...]
    svg: str


@dataclass
class Overview:
    model: str
    backend: str
    adapter: str
    stats: dict[str, Any]
    sources: int | None
    chunks: int | None
    activity: Activity
    last_run: RunView | None
    next_run: str
    training_now: bool
    waiting: str | None
    canary_text: str = ""
    warnings: list[str] = field(default_factory=list)


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _gate(scores: dict[str, Any]) -> list[GateRow]:
    rows: list[GateRow] = []
    for part, ref_name in (("heldout", "reference"), ("probes", "reference"),
                           ("regression", "base")):
        block = scores.get(part) or {}
        cand, ref = block.get("candidate") or {}, block.get(ref_name) or {}
        for key in sorted(set(cand) | set(ref)):
            if isinstance(cand.get(key, ref.get(key)), int | float):
                rows.append(GateRow(f"{part} {key}", _num(cand.get(key)), _num(ref.get(key))))
    return rows


def run_view(run: TrainingRun, registry: Registry) -> RunView:
    meta = registry.meta(run.version) if run.version else {}
    status = "waiting" if meta.get("status") == "waiting" else run.status
    scores = meta.get("scores") or run.report.get("scores") or {}
    recent = scores.get("recent") or {}
    ref = ((scores.get("heldout") or {}).get("reference") or {}).get("loss")
    training = run.report.get("training") or {k: meta.get(k) for k in (
        "samples_per_s", "peak_rss_mb", "steps", "train_runtime_s") if k in meta}
    reasons = meta.get("reasons") or (run.report.get("decision") or {}).get("reasons") or []
    return RunView(
        run=run, status=status,
        duration_s=(run.finished_at - run.started_at) if run.finished_at else None,
        training=dict(training), dataset=dict(run.report.get("dataset") or {}),
        gate=tuple(_gate(scores)),
        changed=tuple(r for r in recent.get("rows", []) if r.get("changed")),
        reasons=tuple(str(r) for r in reasons),
        svg=loss_svg(meta.get("loss_curve") or [], ref if isinstance(ref, float) else None))


async def runs(core: ConsoleCore, cfg: ConsoleSettings, limit: int = 30) -> list[RunView]:
    registry = Registry(cfg.storage.path)
    return [run_view(r, registry) for r in await core.store.runs(limit)]


def next_run(cfg: ConsoleSettings, now: dt.datetime | None = None) -> str:
    if not cfg.training.enabled:
        return "nightly training is off ([training] enabled = false)"
    try:
        from training.scheduler import cron_trigger

        trigger = cron_trigger(cfg)
        at = trigger.get_next_fire_time(None, now or dt.datetime.now(trigger.timezone))
    except Exception as exc:
        return f"unknown ({exc})"
    return at.strftime("%Y-%m-%d %H:%M %Z") if at else "never"


async def overview(core: ConsoleCore, cfg: ConsoleSettings, integrity: str) -> Overview:
    kb = knowledge_base(core)
    sources = chunks = None
    warnings: list[str] = []
    if integrity != "ok":
        warnings.append(f"Database integrity check: {integrity}. Stop NightOwl and restore a "
                        "backup (nightowl restore).")
    if kb is not None:
        found = await kb.sources()
        sources, chunks = len(found), sum(s.chunks for s in found)
        if getattr(kb, "needs_reindex", False):
            warnings.append("The knowledge base was indexed with another embedding model: "
                            "reindex it (Knowledge page).")
    free = shutil.disk_usage(cfg.storage.path).free
    if free < LOW_DISK_BYTES:
        warnings.append(f"Low disk space in the storage dir: {free / 1024**2:.0f} MB free.")
    run_rows = await runs(core, cfg, 1)
    last = run_rows[0] if run_rows else None
    if last is not None and last.status == "failed":
        warnings.append(f"The last training run (#{last.run.id}) failed: {last.run.summary}")
    pending = len(await core.store.pending_messages())
    if pending:
        warnings.append(f"{pending} message(s) stored but not answered yet (answered or "
                        "apologised for at the next start of their platform).")
    learning = core.learning
    stats = core.model.stats()
    return Overview(
        model=core.model.name, backend=str(stats.get("backend", cfg.model.backend)),
        adapter=core.model.active_adapter or "base",
        stats={k: v for k, v in stats.items() if isinstance(v, int | float | str)
               and k not in ("backend", "adapter", "canary", "canary_share")},
        sources=sources, chunks=chunks, activity=await Insights(core.store).activity(time.time()),
        last_run=last, next_run=next_run(cfg),
        training_now=bool(learning is not None and learning.running),
        waiting=learning.waiting_candidate() if learning is not None else None,
        canary_text=describe(core.model.canary, core.model.active_adapter), warnings=warnings)
