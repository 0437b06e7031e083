"""The nightly learning cycle: an APScheduler 3.x AsyncIOScheduler job inside ``nightowl run``.

The job runs ``LearningService.retrain("schedule")`` on the ``[training] schedule`` cron in
``[training] timezone`` with coalescing, a misfire grace time and ``max_instances=1``; the service's
lock makes it single-flight with ``/retrain``. SQLAlchemy is not installed, so APScheduler's
persistent SQLAlchemyJobStore is unavailable (and its pickled jobs could not reference the live
service anyway): the job lives in the default memory job store and the last run time is persisted
in the store's ``kv`` table instead; at start a run missed while the bot was down (within the grace
time) is caught up once, which is what a persistent job store with coalescing would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from training.config import LearningSettings
from training.errors import TrainingError
from training.service import LearningService, RetrainOutcome

log = logging.getLogger("nightowl.training")

JOB_ID = "nightowl-nightly-training"
LAST_RUN_KEY = "training.schedule.last_run"
Notify = Callable[[str, list[Path]], Awaitable[None]]


def timezone_of(name: str) -> dt.tzinfo:
    if name in ("", "local"):
        import tzlocal

        return tzlocal.get_localzone()
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception as exc:
        raise TrainingError(f"[training] timezone {name!r} is not a known time zone; use 'local' "
                          "or an IANA name like 'Europe/Lisbon'.") from exc


def cron_trigger(cfg: LearningSettings) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(cfg.training.schedule,
                                        timezone=timezone_of(cfg.training.timezone))
    except ValueError as exc:
        raise TrainingError(f"[training] schedule {cfg.training.schedule!r} is not a valid cron "
                          f"expression (minute hour day month weekday): {exc}") from exc


def previous_fire_time(trigger: Any, now: dt.datetime, horizon_s: float) -> dt.datetime | None:
    """The last time ``trigger`` fired in (now - horizon, now], if any."""
    t = trigger.get_next_fire_time(None, now - dt.timedelta(seconds=horizon_s))
    last = None
    while t is not None and t <= now:
        last = t
        t = trigger.get_next_fire_time(t, t + dt.timedelta(seconds=1))
    return last


class NightlyScheduler:
    """``async with NightlyScheduler(cfg, service, notify=core.notify_admins):`` in ``run``."""

    def __init__(self, cfg: LearningSettings, service: LearningService, *,
                 notify: Notify | None = None, misfire_grace_s: int = 3600) -> None:
        self.cfg = cfg
        self.service = service
        self.notify = notify
        self.misfire_grace_s = misfire_grace_s
        self.scheduler: Any = None
        self.runs = 0
        self.skipped = 0
        # the run started on entry to make up for one missed while the bot was down, if any
        self.catch_up: asyncio.Task[Any] | None = None
        self.current: asyncio.Task[Any] | None = None  # the scheduled run in progress

    @property
    def next_run_time(self) -> dt.datetime | None:
        job = self.scheduler.get_job(JOB_ID) if self.scheduler is not None else None
        return job.next_run_time if job is not None else None

    async def __aenter__(self) -> NightlyScheduler:
        if not self.cfg.training.enabled:
            log.info("nightly training is disabled ([training] enabled = false)")
            return self
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        trigger = cron_trigger(self.cfg)
        self.scheduler = AsyncIOScheduler(timezone=timezone_of(self.cfg.training.timezone))
        self.scheduler.add_job(
            run_scheduled, trigger, args=[self], id=JOB_ID, name="nightly learning cycle",
            coalesce=True, misfire_grace_time=self.misfire_grace_s, max_instances=1,
            replace_existing=True)
        self.scheduler.start()
        log.info("nightly training scheduled (%s, memory job store, last run in kv); next run %s",
                 self.cfg.training.schedule, self.next_run_time)
        await self._catch_up(trigger)
        return self

    async def _catch_up(self, trigger: Any) -> None:
        raw = await self.service.store.kv_get(LAST_RUN_KEY)
        now = dt.datetime.now(dt.UTC)
        missed = previous_fire_time(trigger, now, self.misfire_grace_s)
        if missed is None:
            return
        last = dt.datetime.fromtimestamp(float(raw), dt.UTC) if raw else None
        if last is None or last < missed:
            log.info("catching up the scheduled training run missed at %s", missed)
            self.catch_up = asyncio.create_task(self.fire())

    async def __aexit__(self, *exc: object) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        for task in (self.catch_up, self.current):
            if task is not None:  # a run in progress is cancelled: its child trainer is killed
                task.cancel()  # a no-op once it finished
                with contextlib.suppress(BaseException):
                    await task

    async def fire(self) -> RetrainOutcome | None:
        """One scheduled run (also what the cron job calls). Skips if training is running."""
        if self.service.running:
            self.skipped += 1
            log.info("scheduled training skipped: a run is already in progress")
            return None
        await self.service.store.kv_set(LAST_RUN_KEY, str(dt.datetime.now(dt.UTC).timestamp()))
        self.runs += 1
        result = await self.service.retrain("schedule")
        if self.notify is not None:
            try:
                await self.notify(result.text, list(result.files))
            except Exception:
                log.exception("could not notify admins of the scheduled run")
        return result


async def run_scheduled(sched: NightlyScheduler) -> None:
    """The APScheduler job function."""
    sched.current = asyncio.current_task()
    try:
        await sched.fire()
    except Exception:  # a failed run never stops the scheduler
        log.exception("scheduled training failed")
    finally:
        sched.current = None
