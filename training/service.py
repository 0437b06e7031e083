"""LearningService: what the running bot uses from training/ (implements bot.core.Learning).

One asyncio lock makes training single-flight for ``/retrain``, the terminal and the scheduler; the
cycle also takes a file lock so a ``nightowl train`` in another process cannot overlap. Changing
the active adapter (``/rollback``, approving a candidate, following another process's change)
takes only the registry's short ACTIVE lock (:meth:`Registry.pointer_lock_async`), never the
training lock: a rollback does not wait for a training run, and a run that finishes after a
rollback does not promote over it (:func:`training.cycle.run_cycle`). With
``[training] promote = "admin"`` a candidate that passed the gate waits in the registry (status
``waiting``) until :meth:`LearningService.approve_candidate` activates it or
:meth:`~LearningService.reject_candidate` drops it; both are recorded on the run and in the
adapter's ``meta.json`` with who decided.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.store import Store
from data.users import Forgotten
from llm.base import ChatModel
from llm.errors import AdapterError
from training.config import LearningSettings
from training.cycle import fail_stale_runs, run_cycle
from training.dataset import ContentGuard
from training.errors import LOOP_ERRORS
from training.outcome import CycleResult
from training.probes import ProbeFile
from training.registry import Registry

log = logging.getLogger("nightowl.training")


@dataclass
class RetrainOutcome:
    """What a retrain reports to whoever asked: the text, success, files (the loss plot)."""

    text: str
    ok: bool = True
    files: list[Path] = field(default_factory=list)


class LearningService:
    def __init__(self, cfg: LearningSettings, store: Store, model: ChatModel | None,
                 say: Callable[[str], Any] | None = None,
                 guard: ContentGuard | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.model = model
        self.registry = Registry(cfg.storage.path)
        self.probes = ProbeFile(cfg.storage.path / "probes.json")
        self.lock = asyncio.Lock()
        self.last: CycleResult | None = None
        self.last_finished: float | None = None
        self._say = say or log.info
        self.guard = guard

    @property
    def running(self) -> bool:
        return self.lock.locked()

    async def activate_on_start(self) -> str | None:
        """Load the ACTIVE adapter into the model; a corrupt one keeps the base (logged)."""
        try:
            # another process's live run is not stale: only under the training lock
            await fail_stale_runs(self.cfg.storage.path, self.store)
        except Exception:
            log.exception("could not mark interrupted training runs as failed")
        version = self.registry.active()
        if version is None or self.model is None:
            return version
        try:
            path = self.registry.validate(version)
            await self.model.set_adapter(path, version)
        except LOOP_ERRORS as exc:
            log.error("active adapter %s not loaded, answering with the base model: %s",
                      version, exc)
            return None
        log.info("active adapter %s loaded", version)
        return version

    async def retrain(self, trigger: str = "manual") -> RetrainOutcome:
        if self.lock.locked():
            return RetrainOutcome("A training run is already in progress.", ok=False)
        async with self.lock:
            result = await run_cycle(self.cfg, self.store, trigger=trigger, model=self.model,
                                     say=self._say, guard=self.guard)
            self.last = result
            self.last_finished = time.time()
        files = [result.plot] if result.plot is not None and result.plot.exists() else []
        return RetrainOutcome(result.text(), ok=result.status != "failed", files=files)

    async def rollback(self, version: str | None) -> str:
        """Activate ``version`` (default: the previous promoted one) and hot-swap the model;
        never waits for a training run (only for the short ACTIVE lock)."""
        async with self.registry.pointer_lock_async():
            try:
                old = self.registry.active()
                _, target = self.registry.plan_rollback(version)
                path = self.registry.path(target) if target else None
                if self.model is not None:
                    await self.model.set_adapter(path, target)
                self.registry.set_active(target)
            except AdapterError as exc:
                return f"Rollback refused: {exc} Kept {self.registry.active() or 'base'}."
        return f"Active adapter is now {target or 'the base model'} (was {old or 'base'})."

    async def sync_active(self) -> str | None:
        """Follow the ACTIVE pointer if another process changed it (`nightowl train/rollback`).

        Returns the version switched to, or None when nothing changed or the switch was refused.
        """
        if self.model is None or self.registry.active() == self.model.active_adapter:
            return None
        async with self.registry.pointer_lock_async():
            wanted = self.registry.active()
            if wanted == self.model.active_adapter:
                return None
            try:
                path = self.registry.validate(wanted) if wanted else None
                await self.model.set_adapter(path, wanted)
            except LOOP_ERRORS as exc:
                log.error("ACTIVE points to %s but it cannot be loaded; keeping %s: %s", wanted,
                          self.model.active_adapter or "base", exc)
                return None
        log.info("switched to adapter %s (changed by another process)", wanted or "base")
        return wanted

    async def purge_forgotten(self, who: Forgotten) -> int:
        """/forget: drop a user's records from the dataset files on disk (runs, exports: by id,
        by text in files from before records had ids), and the recent questions sampled into
        run reports. File work runs off the event loop; an unreadable or unwritable file
        raises (``OSError``) so /forget reports it."""
        from training.forget import PurgeError, needles_of, purge_dataset_lines
        from training.forget_runs import purge_questions, purge_run_files

        root = self.cfg.storage.path
        removed = 0
        needles = needles_of(who.texts)
        failed: list[str] = []
        jobs = [functools.partial(purge_dataset_lines, root / sub, who)
                for sub in ("runs", "exports")]
        jobs += [functools.partial(purge_run_files, root / sub, needles)
                 for sub in ("runs", "adapters")]
        for job in jobs:
            try:  # one broken file or folder does not keep the others
                removed += await asyncio.to_thread(job)
            except (OSError, UnicodeDecodeError) as exc:
                failed.append(str(exc))
        for run in await self.store.runs(limit=100_000):
            report = dict(run.report)
            n = purge_questions(report, needles)
            if n:
                removed += n
                await self.store.set_run_report(run.id, report)
        if failed:
            raise PurgeError("; ".join(failed))
        return removed

    async def purge_texts(self, texts: list[str]) -> int:
        """The text-only purge (files without ids); :meth:`purge_forgotten` is /forget's."""
        return await self.purge_forgotten(Forgotten(texts=tuple(texts)))

    # ---- promotion on approval ([training] promote = "admin") --------------------------------
    def _waiting(self) -> str | None:
        found = [i.version for i in self.registry.infos() if i.status == "waiting"]
        return found[-1] if found else None

    def waiting_candidate(self) -> str | None:
        """A text describing the candidate waiting for an admin, else None."""
        version = self._waiting()
        if version is None:
            return None
        meta = self.registry.meta(version)
        reasons = "; ".join(str(r) for r in meta.get("reasons", []))
        return (f"Candidate {version} (run #{meta.get('run_id', '?')}, parent "
                f"{meta.get('parent') or 'base'}, {meta.get('examples', '?')} examples) passed "
                f"the gate and waits for approval: {reasons}")

    async def approve_candidate(self, by: str) -> str:
        """Activate the waiting candidate (hot swap) and record who approved it (under the
        ACTIVE lock only: approving does not wait for a training run)."""
        async with self.registry.pointer_lock_async():
            version = self._waiting()
            if version is None:
                return "No candidate is waiting for approval."
            try:
                path = self.registry.validate(version)
                if self.model is not None:
                    await self.model.set_adapter(path, version)
                self.registry.set_active(version)
            except LOOP_ERRORS as exc:
                self.registry.update_meta(version, status="rejected",
                                          reasons=[f"could not be activated: {exc}"])
                return f"Candidate {version} could not be activated ({exc}); nothing changed."
            self.registry.update_meta(version, status="promoted", approved_by=by,
                                      approved_at=time.time())
            await self._record(version, "promoted", f"promoted {version}, approved by {by}")
        return f"Approved: {version} is now the active adapter."

    async def reject_candidate(self, by: str) -> str:
        """Drop the waiting candidate; the active adapter stays."""
        async with self.lock:
            version = self._waiting()
            if version is None:
                return "No candidate is waiting for approval."
            self.registry.update_meta(version, status="rejected", rejected_by=by,
                                      rejected_at=time.time())
            await self._record(version, "rejected", f"rejected {version} by {by}")
        return (f"Rejected {version}; {self.registry.active() or 'the base model'} stays "
                "active.")

    async def _record(self, version: str, status: str, summary: str) -> None:
        meta = self.registry.meta(version)
        run_id = meta.get("run_id")
        if not isinstance(run_id, int):
            return
        run = next((r for r in await self.store.runs(limit=1000) if r.id == run_id), None)
        if run is not None:
            await self.store.finish_run(run_id, status, version=version, parent=run.parent,
                                        summary=summary, report=run.report)

    def adapters_text(self) -> str:
        if not self.registry.versions():
            return ""
        return self.registry.describe()

    def status_line(self) -> str:
        active = self.registry.active() or "base"
        if self.running:
            return f"training: running now (active adapter {active})"
        if self.last is not None:
            return f"training: last run #{self.last.run_id} {self.last.status} (active {active})"
        return f"training: idle (active adapter {active})"

    def probe(self, args: str) -> str:
        try:
            return self.probes.command(args)
        except LOOP_ERRORS as exc:
            return str(exc)
