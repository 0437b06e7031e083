"""The composition root: the one place that wires NightOwl.

store → model → knowledge → learning → core (:func:`open_services`), then the platforms, the
console, the metrics endpoint, the chores and the nightly scheduler (:func:`run_platforms`),
each opened with a nested ``async with`` and closed in reverse order; everything is passed down
through constructors. A piece that is switched off (no token, ``[rag] enabled = false``...)
yields None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from bot.core import ConfigError, Core
from bot.core.moderation import Guards, open_guard
from data.errors import StoreError
from data.lock import storage_lock
from data.store import Store
from llm.base import ChatModel
from llm.factory import open_model
from rag.knowledge import Knowledge, ensure_sample, open_knowledge
from training.cycle import fail_stale_runs, warm_up
from training.retention import apply_retention
from training.scheduler import NightlyScheduler
from training.service import LearningService

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
    model: ChatModel
    knowledge: Knowledge | None
    learning: LearningService | None


# ---- the pieces, each an async context --------------------------------------------------------
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
async def _model(cfg: Config, say: Say) -> AsyncIterator[ChatModel]:
    model = await open_model(cfg.model, cfg.storage.path, say=say)
    try:
        yield model
    finally:
        await model.aclose()


@asynccontextmanager
async def _knowledge(cfg: Config, store: Store, wanted: bool,
                     say: Say) -> AsyncIterator[Knowledge | None]:
    if not (wanted and cfg.rag.enabled):
        yield None
        return
    kb = await open_knowledge(cfg, store)
    try:
        if cfg.rag.sample_on_first_run:
            results = await ensure_sample(kb)
            if results:
                say(f"Ingested the sample knowledge base ({len(results)} files).")
        yield kb
    finally:
        await kb.aclose()


async def _learning(cfg: Config, store: Store, model: ChatModel, wanted: bool,
                    guard: Guards) -> LearningService | None:
    if not wanted:
        return None
    service = LearningService(cfg, store, model, guard=guard)
    await service.activate_on_start()
    return service


@asynccontextmanager
async def open_services(cfg: Config, *, say: Say = print, knowledge: bool = True,
                        learning: bool = True) -> AsyncIterator[Services]:
    """Open the store, the model, the knowledge base and the learning service; build the core."""
    async with open_store(cfg, check=True) as store:
        stale = await fail_stale_runs(cfg.storage.path, store)  # never another's live run
        if stale:
            log.warning("marked %d interrupted training run(s) as failed", stale)
        async with _model(cfg, say) as model, _knowledge(cfg, store, knowledge, say) as kb:
            guard = await open_guard(cfg.moderation)  # a classifier loads off the loop, once
            service = await _learning(cfg, store, model, learning, guard)
            core = Core(cfg, store, model, kb, service, guard=guard)
            if service is not None:  # the console's canary choice, whether or not it serves
                from bot.console.canary import restore as restore_canary

                await restore_canary(core, cfg)
            try:
                yield Services(cfg, store, core, model, kb, service)
            finally:
                await core.wait_background()


@asynccontextmanager
async def _telegram(cfg: Config, core: Core, say: Say) -> AsyncIterator[object | None]:
    token = cfg.secret(cfg.telegram.token_env)
    if not token:
        yield None
        return
    from bot.telegram.adapter import TelegramBot  # python-telegram-bot only when it is used

    async with TelegramBot(cfg.telegram, core, token) as bot:
        say("Telegram: connected.")
        yield bot


@asynccontextmanager
async def _discord(cfg: Config, core: Core, say: Say) -> AsyncIterator[object | None]:
    token = cfg.secret(cfg.discord.token_env)
    if not token:
        yield None
        return
    from bot.discord.client import DiscordBot  # discord.py only when it is used

    async with DiscordBot(cfg.discord, core, token) as bot:
        say("Discord: connected.")
        yield bot


@asynccontextmanager
async def _console(svc: Services, say: Say) -> AsyncIterator[object | None]:
    if not svc.cfg.console.enabled:
        yield None
        return
    from bot.console.server import Console

    console = Console(svc.core, svc.cfg)
    try:
        await console.__aenter__()
    except ConfigError as exc:  # a busy port must not keep the bots from running
        log.error("console not started: %s", exc)
        say(f"Console: not started ({exc})")
        yield None
        return
    try:
        say(f"Console: {console.url}")
        if not console.has_admin:
            say("Console: no admin yet; run `nightowl console passwd` to set a password.")
        yield console
    finally:
        await console.__aexit__(None, None, None)


@asynccontextmanager
async def _metrics(svc: Services, say: Say) -> AsyncIterator[None]:
    m = svc.cfg.metrics
    if not m.port:
        yield
        return
    svc.core.metrics.serve(m.host, m.port)
    say(f"Metrics: http://{m.host}:{m.port}/metrics")
    try:
        yield
    finally:
        svc.core.metrics.close()


@asynccontextmanager
async def _chores(svc: Services) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(_housekeeping(svc)),
             asyncio.create_task(_follow_active_adapter(svc))]
    try:
        yield
    finally:
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@asynccontextmanager
async def _nightly(svc: Services, say: Say) -> AsyncIterator[None]:
    if not (svc.cfg.training.enabled and svc.learning is not None):
        yield
        return
    async with NightlyScheduler(svc.cfg, svc.learning, notify=svc.core.notify_admins):
        say(f"Nightly training scheduled: '{svc.cfg.training.schedule}'.")
        yield


# ---- nightowl run -----------------------------------------------------------------------------
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
    if not cfg.secret(cfg.telegram.token_env) and not cfg.secret(cfg.discord.token_env):
        raise ConfigError(f"no platform token is set: export {cfg.telegram.token_env} (Telegram) "
                          f"and/or {cfg.discord.token_env} (Discord), or use `nightowl chat`.")
    if cfg.console.enabled:
        from bot.console.app import check_bind

        check_bind(cfg.console)  # before the model loads: a refused address fails fast
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    on_signal = ShutdownSignals(stop, say)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    with storage_lock(cfg.storage.path, "nightowl run"):
        return await _serve(cfg, say, stop)


async def _serve(cfg: Config, say: Say, stop: asyncio.Event) -> int:
    async with open_services(cfg, say=say) as svc, _telegram(cfg, svc.core, say), \
            _discord(cfg, svc.core, say), _console(svc, say), _metrics(svc, say), _chores(svc), \
            _nightly(svc, say):
        # what a first training cycle loads (tokenizer, matplotlib) would stall chats: now
        await asyncio.to_thread(warm_up, cfg)
        say("NightOwl is running. Press Ctrl+C to stop.")
        await stop.wait()
        # answers get [chat] shutdown_grace_s, then stay pending; training is cancelled
        await svc.core.shutdown(cfg.chat.shutdown_grace_s)
    return 0


async def _housekeeping(svc: Services, every_s: float = 300.0) -> None:
    """Periodic chores: log retention and metrics gauges. Never raises."""
    while True:
        try:
            svc.core.metrics.observe_model(svc.model.stats(), svc.model.active_adapter)
            days = svc.cfg.privacy.retention_days
            if days:
                pruned = await apply_retention(svc.store, svc.cfg.storage.path, days)
                if pruned:
                    log.info("retention: deleted %s", pruned.summary())
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
