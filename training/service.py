"""LearningService: what the running bot uses from training/ (implements bot.core.Learning).

One asyncio lock makes training single-flight for ``/retrain``, the terminal and the scheduler; the
cycle also takes a file lock so a ``nightowl train`` in another process cannot overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.store import Store
from llm.base import ChatModel
from llm.errors import AdapterError
from training.config import LearningSettings
from training.cycle import CycleResult, run_cycle
from training.dataset import ContentGuard
from training.errors import LOOP_ERRORS
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
            await self.store.fail_stale_runs()
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
        """Activate ``version`` (default: the previous promoted one) and hot-swap the model."""
        async with self.lock:
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
        if self.model is None or self.lock.locked():
            return None
        wanted = self.registry.active()
        if wanted == self.model.active_adapter:
            return None
        async with self.lock:
            try:
                path = self.registry.validate(wanted) if wanted else None
                await self.model.set_adapter(path, wanted)
            except LOOP_ERRORS as exc:
                log.error("ACTIVE points to %s but it cannot be loaded; keeping %s: %s", wanted,
                          self.model.active_adapter or "base", exc)
                return None
        log.info("switched to adapter %s (changed by another process)", wanted or "base")
        return wanted

    async def purge_texts(self, texts: list[str]) -> int:
        """/forget: drop a user's lines from dataset files on disk (runs and exports)."""
        from training.forget import purge_dataset_lines

        root = self.cfg.storage.path
        removed = 0
        for sub in ("runs", "exports"):
            removed += await asyncio.to_thread(purge_dataset_lines, root / sub, texts)
        return removed

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
