"""One learning cycle: build the dataset -> train (child) -> gate -> publish (register, promote).

:func:`run_cycle` is the single importable entry point used by ``nightowl train``, ``/retrain`` and
the nightly scheduler. It never raises for an ordinary failure: the run is recorded as ``failed``
(nothing promoted, previous adapter kept) and the result says why. With ``[training] promote =
"admin"`` a candidate that passes the gate is registered as ``waiting`` (the run row says so) and
only an admin's approval (``LearningService.approve_candidate``) activates it; a newer waiting
candidate supersedes an older one. The cycle runs on the bot's event loop and never blocks it:
its file work (dataset files, probes, the registry, retention, the report) runs in worker
threads, the training in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from data.rows import TrainingConversation
from data.store import Store
from llm.base import ChatMessage, ChatModel
from llm.errors import AdapterError, BusyError
from training.config import LearningSettings
from training.dataset import (
    ContentGuard,
    DatasetReport,
    Example,
    Split,
    build_examples,
    load_seen,
    mark_seen,
    split_examples,
    write_jsonl,
)
from training.errors import LOOP_ERRORS
from training.gate import decide, load_regression, regression_key
from training.job import RegressionSet, TrainJob
from training.launch import train_in_child, training_threads
from training.outcome import CycleResult, resolved_config, write_plot
from training.preferences import preference_rows, read_votes, write_rows
from training.probes import ProbeFile
from training.registry import Registry
from training.replay import answers_key, load_replay
from training.scrub import scrub

log = logging.getLogger("nightowl.training")
Say = Callable[[str], Any]
REGRESSION_TOKENS = 40


@lru_cache(maxsize=4)
def _tokenizer(model_path: str) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    from training.template import training_template

    tok = AutoTokenizer.from_pretrained(model_path)
    return tok, training_template(tok)


def token_counter(model_path: str) -> Callable[[Sequence[ChatMessage]], int]:
    tok, template = _tokenizer(model_path)

    def count(messages: Sequence[ChatMessage]) -> int:
        ids = tok.apply_chat_template(list(messages), chat_template=template, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)
    return count


def warm_up(cfg: LearningSettings) -> None:
    """Load what a cycle loads once per process: the training tokenizer and matplotlib. Both
    hold the GIL while they load (parsing tokenizer.json, importing extension modules), which
    stalls an event loop for a few hundred ms even from a worker thread; a process that serves
    chats calls this (in a worker thread) before it serves. Blocking; failures are left to the
    cycle to report."""
    from llm.embedded import resolve_model_path

    with contextlib.suppress(Exception):
        token_counter(resolve_model_path(cfg.model.name, cfg.storage.path, log.info))
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot


@contextlib.contextmanager
def run_lock(storage: Path) -> Iterator[None]:
    """One training run per storage dir, across processes (bot + `nightowl train`)."""
    path = storage / "runs" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BusyError("another training run is in progress for this storage dir; try "
                            "again when it has finished.") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


async def fail_stale_runs(storage: Path, store: Store) -> int:
    """Mark 'running' rows failed only while holding the training lock, so a run that another
    process starts meanwhile is never marked (it waits for the lock, or we skip)."""
    try:
        with run_lock(storage):
            return await store.fail_stale_runs()
    except BusyError:
        return 0


async def run_cycle(cfg: LearningSettings, store: Store, *, trigger: str = "manual",
                    model: ChatModel | None = None, say: Say = print,
                    guard: ContentGuard | None = None) -> CycleResult:
    """Run one learning cycle now; see the module docstring."""
    storage = cfg.storage.path
    try:
        with run_lock(storage):
            return await _cycle(cfg, store, trigger, model, say, guard)
    except BusyError as exc:
        return CycleResult("skipped", 0, str(exc))


async def _cycle(cfg: LearningSettings, store: Store, trigger: str, model: ChatModel | None,
                 say: Say, guard: ContentGuard | None) -> CycleResult:
    from llm.embedded import resolve_model_path

    storage = cfg.storage.path
    registry = Registry(storage)
    run_id = await store.start_run(trigger)
    run_dir = storage / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-run{run_id:04d}"
    parent = await asyncio.to_thread(_open_run, registry, run_dir)
    started = time.time()
    staging: Path | None = None
    version: str | None = None
    report: dict[str, Any] = {"trigger": trigger, "run_dir": str(run_dir)}
    try:
        say(f"Learning cycle #{run_id} ({trigger}): building the dataset...")
        model_path = await asyncio.to_thread(resolve_model_path, cfg.model.name, storage, say)
        counter = await asyncio.to_thread(token_counter, model_path)
        convs = await store.training_conversations()
        disliked: list[Example] = []
        examples, ds = await asyncio.to_thread(
            build_examples, cfg, convs, now=time.time(), count_tokens=counter, guard=guard,
            disliked=disliked if cfg.training.method == "kto" else None)
        seen = await load_seen(store)
        split, prefs, pref_skip = await asyncio.to_thread(_split, cfg, examples, seen, ds,
                                                          disliked, run_dir)
        report["dataset"] = ds.to_dict()
        if pref_skip is not None:
            await store.finish_run(run_id, "skipped", parent=parent, summary=pref_skip,
                                   report=report)
            say(pref_skip)
            return CycleResult("skipped", run_id, pref_skip, parent=parent, report=report,
                               run_dir=run_dir)
        if len(split.new) < cfg.training.min_examples:
            summary = (f"skipped: {len(split.new)} new training examples, at least "
                       f"{cfg.training.min_examples} needed ([training] min_examples). Rate "
                       "answers with 👍 or /correct them to create training data.")
            await store.finish_run(run_id, "skipped", parent=parent, summary=summary,
                                   report=report)
            say(summary)
            return CycleResult("skipped", run_id, summary, parent=parent, report=report,
                               run_dir=run_dir)
        reference, warning = await asyncio.to_thread(_reference, registry, parent)
        if warning:
            say(warning)
        staged, job = await asyncio.to_thread(_stage, cfg, registry, model_path, reference,
                                              run_dir, split, prefs, convs)
        staging = staged
        say(f"Training on {len(split.train)} examples ({len(split.new)} new) in a child "
            "process...")
        result = await train_in_child(cfg, job, say=say)
        decision = decide(result.scores, cfg.training.eval_tolerance,
                          cfg.training.max_changed)
        waiting = decision.promote and cfg.training.promote == "admin"
        train_stats = result.summary()
        report["training"] = train_stats
        report["scores"] = result.scores
        report["decision"] = {"promote": decision.promote, "reasons": decision.reasons}
        meta = {"status": "waiting" if waiting else "promoted" if decision.promote
                else "rejected", "parent": parent,
                "reference": reference, "trigger": trigger, "run_id": run_id,
                "config": resolved_config(cfg),
                "model": cfg.model.name, "model_path": model_path, "dataset": ds.to_dict(),
                "examples": len(split.train), "loss_curve": result.stats.loss_curve,
                "scores": result.scores, "reasons": decision.reasons,
                "duration_s": round(time.time() - started, 2), **train_stats}
        registered, history = await asyncio.to_thread(_register, registry, staged, meta)
        version, staging = registered, None
        ref_loss = result.scores["heldout"].get("reference", {}).get("loss")
        plot = await asyncio.to_thread(write_plot, run_dir / "training.png",
                                       result.stats.loss_curve, history[-20:],
                                       ref_loss if isinstance(ref_loss, float) else None)
        report["plot"] = str(plot) if plot else None
        status = "promoted" if decision.promote else "rejected"
        reasons = list(decision.reasons)
        active = parent
        if waiting:
            status = "waiting"
            await asyncio.to_thread(_supersede, registry, version)
        elif decision.promote:
            status, active = await _promote(registry, model, version, parent, reasons)
        await mark_seen(store, [e.key for e in split.train])
        await asyncio.to_thread(registry.prune, cfg.training.keep_adapters)
        if status == "promoted":
            summary = f"promoted {version} (parent {parent or 'base'})"
        elif status == "waiting":
            summary = (f"{version} passed the gate and waits for an admin's approval "
                       f"([training] promote = \"admin\"); {parent or 'the base model'} stays "
                       "active")
        elif status == "rejected" and active != parent:
            summary = (f"{version} passed the gate but was not promoted: the active adapter "
                       f"changed during the run ({parent or 'base'} -> {active or 'base'}, a "
                       f"rollback or another promotion); {active or 'the base model'} stays "
                       "active")
        elif status == "rejected":
            summary = f"rejected {version}; {active or 'the base model'} stays active"
        else:
            summary = f"failed to activate {version}; {active or 'the base model'} stays active"
        await store.finish_run(run_id, status,
                               version=version, parent=parent, summary=summary, report=report)
        await asyncio.to_thread(_write_json, run_dir / "report.json", report)
        res = CycleResult(status, run_id, summary, version=version, parent=parent,
                          reasons=reasons, report=report, plot=plot, run_dir=run_dir)
        say(res.text())
        return res
    except asyncio.CancelledError:
        await _fail(store, run_id, "cancelled (the process is stopping)", parent, report)
        raise
    except Exception as exc:
        log.exception("training cycle %s failed", run_id)
        summary = f"failed: {exc}"
        if version is not None:
            await asyncio.to_thread(_mark_failed, registry, version, summary)
        await _fail(store, run_id, summary, parent, report)
        say(f"Training run #{run_id} {summary}")
        return CycleResult("failed", run_id, summary, parent=parent, report=report,
                           run_dir=run_dir)
    finally:
        if staging is not None:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True))


async def _promote(registry: Registry, model: ChatModel | None, version: str, parent: str | None,
                   reasons: list[str]) -> tuple[str, str | None]:
    """Activate ``version``, under the ACTIVE lock, unless ACTIVE moved away from ``parent``
    during the run (a rollback or another process's change wins). (status, the active version
    afterwards)."""
    async with registry.pointer_lock_async():
        current = await asyncio.to_thread(registry.active)
        if current != parent:
            reasons.append(f"not promoted: the active adapter changed during the run "
                           f"({parent or 'base'} -> {current or 'base'}); retrain to build on it")
            await asyncio.to_thread(registry.update_meta, version, status="rejected",
                                    reasons=reasons)
            return "rejected", current
        if model is not None:
            try:
                await model.set_adapter(registry.path(version), version)
            except LOOP_ERRORS as exc:
                reasons.append(f"the new adapter could not be loaded for serving: {exc}")
                await asyncio.to_thread(registry.update_meta, version, status="rejected",
                                        reasons=reasons)
                return "failed", current
        await asyncio.to_thread(registry.set_active, version)
        return "promoted", version


# ---- the cycle's file work: each runs in a worker thread, never on the event loop -------------
def _open_run(registry: Registry, run_dir: Path) -> str | None:
    """Drop staging left by a crash, make the run folder; the active version (the parent)."""
    registry.clean_staging()
    run_dir.mkdir(parents=True, exist_ok=True)
    return registry.active()


def _split(cfg: LearningSettings, examples: list[Example], seen: set[str], ds: DatasetReport,
           disliked: list[Example], run_dir: Path
           ) -> tuple[Split, list[dict[str, Any]], str | None]:
    """The held-out split and the preference rows; writes ``dataset.json``."""
    split = split_examples(cfg, examples, seen, ds)
    held_convs = {e.conversation_id for e in split.eval}
    votes = (read_votes(cfg.storage.path, cfg.model.system_prompt, cfg.privacy.scrub_pii)
             if cfg.training.method != "sft" else [])  # the console's blind A/B votes
    prefs, pref_skip = preference_rows(
        cfg.training.method, split.train,
        [e for e in disliked if e.conversation_id not in held_convs], votes=votes, report=ds)
    _write_json(run_dir / "dataset.json", ds.to_dict())
    return split, prefs, pref_skip


def _reference(registry: Registry, parent: str | None) -> tuple[str | None, str | None]:
    """The version to compare against (None = the base model) and a warning when the parent
    is unusable."""
    if parent is None:
        return None, None
    try:
        registry.validate(parent)
    except AdapterError as exc:
        return None, f"warning: {exc}; comparing against the base model instead"
    return parent, None


def _stage(cfg: LearningSettings, registry: Registry, model_path: str, reference: str | None,
           run_dir: Path, split: Split, prefs: list[dict[str, Any]],
           convs: Sequence[TrainingConversation]) -> tuple[Path, TrainJob]:
    """Write the run's dataset files, make the staging folder; the child's job."""
    questions = _recent_questions(convs, {e.answer_id for e in split.train},
                                  cfg.training.report_questions)
    write_jsonl(run_dir / "train.jsonl", split.train)
    write_jsonl(run_dir / "eval.jsonl", split.eval)
    if prefs:
        write_rows(run_dir / "prefs.jsonl", prefs)
    staging = registry.staging_dir()
    try:
        return staging, _job(cfg, registry, model_path, reference, run_dir, staging, questions)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _register(registry: Registry, staging: Path, meta: dict[str, Any]
              ) -> tuple[str, list[tuple[str, float]]]:
    """Register the staged adapter; the new version and every version's held-out loss."""
    version = registry.register(staging, meta)
    history = [(info.version, float(info.meta["scores"]["heldout"]["candidate"]["loss"]))
               for info in registry.infos()
               if isinstance((info.meta.get("scores") or {}).get("heldout", {})
                             .get("candidate", {}).get("loss"), float)]
    return version, history


def _supersede(registry: Registry, version: str) -> None:
    """A newer waiting candidate rejects the older waiting ones."""
    for info in registry.infos():
        if info.status == "waiting" and info.version != version:
            registry.update_meta(info.version, status="rejected",
                                 reasons=[f"superseded by {version}"])


def _mark_failed(registry: Registry, version: str, summary: str) -> None:
    if registry.active() != version:
        with contextlib.suppress(Exception):
            registry.update_meta(version, status="failed", reasons=[summary])


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str), "utf-8")


def _recent_questions(convs: Sequence[TrainingConversation], trained: set[int],
                      limit: int) -> tuple[str, ...]:
    """The newest distinct user questions whose answer is not trained in this run (scrubbed)."""
    found: list[tuple[float, str]] = []
    for conv in convs:
        msgs = conv.messages
        for q, a in itertools.pairwise(msgs):
            if q.role == "user" and a.role == "assistant" and a.id not in trained \
                    and q.text.strip():
                found.append((q.created_at, q.text.strip()))
    out: list[str] = []
    for _, raw in sorted(found, reverse=True):  # scrubbed newest first, only as many as needed
        if len(out) >= limit:
            break
        text = scrub(raw).text
        if text not in out:
            out.append(text)
    return tuple(out)


def _job(cfg: LearningSettings, registry: Registry, model_path: str, reference: str | None,
         run_dir: Path, staging: Path, report_questions: tuple[str, ...] = ()) -> TrainJob:
    """The child's job: train on ``run_dir``'s files (+ the base-replay set) into ``staging``,
    compare with ``reference`` (None = the base model) on the held-out set, the probes, the
    regression set and the recent questions."""
    storage = cfg.storage.path
    system = cfg.model.system_prompt
    questions = tuple(load_regression())
    replay = tuple(load_replay(cfg.training.base_replay))
    ref_dir = str(registry.path(reference)) if reference else None
    return TrainJob(
        model_path=model_path, training=cfg.training, job_dir=str(run_dir / "job"),
        train_file=str(run_dir / "train.jsonl"), eval_file=str(run_dir / "eval.jsonl"),
        prefs_file=str(run_dir / "prefs.jsonl") if cfg.training.method != "sft" else None,
        adapter_out=str(staging), system_prompt=system,
        init_adapter=ref_dir if cfg.training.continue_from_active else None,
        reference_adapter=ref_dir, reference_version=reference,
        probes=tuple(ProbeFile(storage / "probes.json").load()),
        regression=RegressionSet(
            questions=questions,
            key=regression_key(model_path, system, questions, REGRESSION_TOKENS),
            cache=str(storage / "runs" / "regression-base.json"),
            max_new_tokens=REGRESSION_TOKENS),
        replay=RegressionSet(
            questions=replay, key=answers_key(model_path, system, replay, REGRESSION_TOKENS),
            cache=str(storage / "runs" / "replay-base.json"),
            max_new_tokens=REGRESSION_TOKENS) if replay else None,
        report_questions=report_questions,
        threads=training_threads(cfg))


async def _fail(store: Store, run_id: int, summary: str, parent: str | None,
                report: dict[str, Any]) -> None:
    try:
        await asyncio.shield(store.finish_run(run_id, "failed", parent=parent, summary=summary,
                                              report=report))
    except Exception:
        log.exception("could not record the failed run %s", run_id)
