"""The one place that wires NightOwl: store, model, knowledge, learning, core, platforms.

Everything is opened with nested ``async with`` and passed down through constructors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.core import Core
from bot.errors import ConfigError
from bot.moderation import build_guard
from data.errors import StoreError
from data.store import Store

log = logging.getLogger("nightowl.app")

Say = Callable[[str], None]


def prepare_environment(cfg: Config) -> None:
    """Keep every library's caches inside the storage dir and never reach for a model hub."""
    root = cfg.storage.path
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HOME", str(root / "hf"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLCONFIGDIR", str(root / "mpl"))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars in chat


def db_path(cfg: Config) -> Path:
    return cfg.storage.path / "nightowl.db"


@dataclass
class Services:
    cfg: Config
    store: Store
    core: Core
    model: Any
    knowledge: Any
    learning: Any


@asynccontextmanager
async def open_store(cfg: Config, check: bool = False) -> AsyncIterator[Store]:
    """Open the database; with ``check``, refuse to start on a failed integrity check."""
    prepare_environment(cfg)
    async with Store(db_path(cfg)) as store:
        if check:
            result = await store.integrity_check()
            if result != "ok":
                raise StoreError(
                    f"the database {db_path(cfg)} failed its integrity check ({result}). Stop "
                    "NightOwl and restore a backup with `nightowl restore PATH`.")
        yield store


@asynccontextmanager
async def open_services(cfg: Config, *, say: Say = print, knowledge: bool = True,
                        learning: bool = True) -> AsyncIterator[Services]:
    """Open the store, the model, the knowledge base and the learning service."""
    from llm.factory import open_model

    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(cfg, check=True))
        stale = await store.fail_stale_runs()
        if stale:
            log.warning("marked %d interrupted training run(s) as failed", stale)
        model = await open_model(cfg.model, cfg.storage.path, say=say)
        stack.push_async_callback(model.aclose)
        kb = None
        if knowledge and cfg.rag.enabled:
            from rag.knowledge import ensure_sample, open_knowledge

            kb = await open_knowledge(cfg, store)
            stack.push_async_callback(kb.aclose)
            if cfg.rag.sample_on_first_run:
                results = await ensure_sample(kb)
                if results:
                    say(f"Ingested the sample knowledge base ({len(results)} files).")
        service = None
        if learning:
            from training.service import LearningService

            service = LearningService(cfg, store, model, guard=build_guard(cfg.moderation))
            await service.activate_on_start()
        core = Core(cfg, store, model, kb, service)
        try:
            yield Services(cfg, store, core, model, kb, service)
        finally:
            await core.wait_background()


class ShutdownSignals:
    """First SIGINT/SIGTERM: stop taking updates and shut down in order. Second: exit now."""

    def __init__(self, stop: asyncio.Event, say: Say,
                 force_exit: Callable[[int], object] = os._exit) -> None:
        self.stop = stop
        self.say = say
        self.force_exit = force_exit
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count > 1:
            log.error("second signal: exiting now")
            self.force_exit(130)
            return
        self.say("Stopping (send the signal again to force)...")
        self.stop.set()


async def run_platforms(cfg: Config, say: Say = print,
                        stop: asyncio.Event | None = None) -> int:
    """``nightowl run``: every platform whose token is set, plus the nightly scheduler."""
    tg_token = cfg.secret(cfg.telegram.token_env)
    dc_token = cfg.secret(cfg.discord.token_env)
    if not tg_token and not dc_token:
        raise ConfigError(f"no platform token is set: export {cfg.telegram.token_env} (Telegram) "
                          f"and/or {cfg.discord.token_env} (Discord), or use `nightowl chat`.")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    on_signal = ShutdownSignals(stop, say)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    async with open_services(cfg, say=say) as svc, AsyncExitStack() as stack:
        if tg_token:
            from bot.telegram import TelegramBot

            await stack.enter_async_context(TelegramBot(cfg, svc.core, tg_token))
            say("Telegram: connected.")
        if dc_token:
            from bot.discord_bot import DiscordBot

            await stack.enter_async_context(DiscordBot(cfg, svc.core, dc_token))
            say("Discord: connected.")
        if cfg.metrics.port:
            svc.core.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            stack.callback(svc.core.metrics.close)
            say(f"Metrics: http://{cfg.metrics.host}:{cfg.metrics.port}/metrics")
        for chore in (_housekeeping(svc), _follow_active_adapter(svc)):
            task = asyncio.create_task(chore)
            stack.push_async_callback(_cancel, task)
        if cfg.training.enabled and svc.learning is not None:
            from training.scheduler import NightlyScheduler

            await stack.enter_async_context(NightlyScheduler(cfg, svc.learning,
                                                             notify=svc.core.notify_admins))
            say(f"Nightly training scheduled: '{cfg.training.schedule}'.")
        say("NightOwl is running. Press Ctrl+C to stop.")
        await stop.wait()
    return 0


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _housekeeping(svc: Services, every_s: float = 300.0) -> None:
    """Periodic chores: log retention and metrics gauges. Never raises."""
    import time

    while True:
        try:
            svc.core.metrics.observe_model(svc.model.stats(), svc.model.active_adapter)
            days = svc.cfg.privacy.retention_days
            if days:
                deleted = await svc.store.delete_older_than(time.time() - days * 86400)
                if deleted:
                    log.info("retention: deleted %d old conversations", deleted)
            runs = await svc.store.runs(1)
            if runs:
                svc.core.metrics.training.set(1.0 if runs[0].status == "promoted" else 0.0)
        except Exception:
            log.exception("housekeeping failed")
        await asyncio.sleep(every_s)


async def _follow_active_adapter(svc: Services, every_s: float = 10.0) -> None:
    """Hot-swap when `nightowl train` / `nightowl rollback` in another process moved ACTIVE."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if svc.learning is not None:
                await svc.learning.sync_active()
        except Exception:
            log.exception("following the active adapter failed")
