"""Running and operating NightOwl: ``run``, ``status``, ``backup``, ``restore``,
``serve-openai``.

``serve-openai`` serves the registry's ACTIVE adapter and follows it (promotions, rollbacks by
another process) as ``nightowl run`` does; ``llm`` knows no registry, so the wiring is here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bot.app import db_path, open_store, prepare_environment, run_platforms
from bot.cli.common import Subparsers, say_err
from bot.config import Config, ServeConfig
from bot.core import NightOwlError
from data.files import fsync_dir
from data.lock import storage_lock
from data.store import Store
from llm.base import ChatModel
from llm.errors import ModelError
from llm.factory import open_model
from training.registry import Registry

if TYPE_CHECKING:
    from llm.openai_server import OpenAIServer

log = logging.getLogger("nightowl.serve")


def register(sub: Subparsers) -> None:
    sub.add_parser("run", help="run the Telegram/Discord bots and the nightly training"
                   ).set_defaults(run=run)
    sub.add_parser("status", help="show model, adapter, knowledge base and training status"
                   ).set_defaults(run=status)
    bk = sub.add_parser("backup", help="copy the database with SQLite's online backup API")
    bk.add_argument("path")
    bk.set_defaults(run=backup)
    rs = sub.add_parser("restore", help="replace the database with a copy of a backup (refused "
                        "while a bot runs; the backup file is not changed)")
    rs.add_argument("path")
    rs.set_defaults(run=restore)
    so = sub.add_parser("serve-openai", help="serve the model over an OpenAI-compatible API")
    so.add_argument("--host", help="address to listen on (default: [serve] host, 127.0.0.1); "
                    "any other than loopback needs an API key")
    so.add_argument("--port", type=int, help="port (default: [serve] port, 8000)")
    so.add_argument("--api-key-env", metavar="NAME",
                    help="environment variable holding the API key (default: [serve] "
                    "api_key_env, NIGHTOWL_API_KEY); when it is set, every request needs "
                    "'Authorization: Bearer KEY'")
    so.set_defaults(run=serve_openai)


async def run(args: argparse.Namespace, cfg: Config) -> int:
    return await run_platforms(cfg)


async def status(args: argparse.Namespace, cfg: Config) -> int:
    """Status without loading the model: store, adapters, knowledge base, last training run."""
    async with open_store(cfg) as store:
        stats = await store.stats()
        registry = Registry(cfg.storage.path)
        print(f"Model: {cfg.model.name} ({cfg.model.backend} backend)")
        print(f"Active adapter: {registry.active() or 'base'} "
              f"({len(registry.versions())} versions on disk)")
        if cfg.rag.enabled:
            sources = await store.kb_sources()
            chunks = sum(s.chunks for s in sources)
            print(f"Knowledge: {len(sources)} sources, {chunks} chunks")
        print(f"Conversations: {stats.conversations}, messages: {stats.messages}, "
              f"users: {stats.users}, feedback: {stats.feedback}, "
              f"corrections: {stats.corrections}")
        runs = await store.runs(1)
        if runs:
            r = runs[0]
            print(f"Last training run: #{r.id} {r.status} {r.version or ''} "
                  f"{r.summary}".rstrip())
        else:
            print("Last training run: none")
        pending = len(await store.pending_messages())
        if pending:
            print(f"Unanswered messages waiting for recovery: {pending}")
        print(f"Database: {await store.integrity_check()}")
    return 0


async def backup(args: argparse.Namespace, cfg: Config) -> int:
    async with open_store(cfg) as store:
        await store.backup(args.path)
    print(f"Backed up {db_path(cfg)} to {args.path}.")
    return 0


RESTORE_REFUSAL = ("Stop it first (a running process keeps writing to the database it has "
                   "open, and those writes would be lost), then run `nightowl restore` again.")


async def restore(args: argparse.Namespace, cfg: Config) -> int:
    """Replace the database with a backup: only while no NightOwl process uses the storage dir
    (exclusive storage lock), and without ever writing to the backup itself: it is copied
    (with its ``-wal`` if it has one), and the copy is checked, migrated and put in place."""
    src = Path(args.path)
    if not src.exists():
        raise NightOwlError(f"backup {src} not found")
    prepare_environment(cfg)
    with storage_lock(cfg.storage.path, "nightowl restore", exclusive=True,
                      refusal=RESTORE_REFUSAL):
        dest = db_path(cfg)
        tmp = dest.with_suffix(".restoring")
        _remove_db(tmp)
        try:
            await asyncio.to_thread(_copy_db, src, tmp)
            async with Store(tmp) as restored:  # migrates the copy; closing checkpoints it
                check = await restored.integrity_check()
            if check != "ok":
                raise NightOwlError(f"backup {src} fails the integrity check ({check}); "
                                    "not restored")
            for suffix in ("-wal", "-shm"):
                Path(str(dest) + suffix).unlink(missing_ok=True)
            tmp.replace(dest)
            fsync_dir(dest.parent)
        finally:
            _remove_db(tmp)
    print(f"Restored {dest} from {src}.")
    return 0


def _copy_db(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    wal = Path(f"{src}-wal")
    if wal.exists():  # a copy of a live database: its last commits may be only in the WAL
        shutil.copyfile(wal, f"{dest}-wal")


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def serve_settings(args: argparse.Namespace, cfg: Config) -> ServeConfig:
    """``[serve]`` with the command line's --host, --port and --api-key-env on top."""
    s = cfg.serve
    return dataclasses.replace(
        s, host=args.host if args.host is not None else s.host,
        port=args.port if args.port is not None else s.port,
        api_key_env=args.api_key_env or s.api_key_env)


class ActiveFollower:
    """Keeps ``model`` on the registry's ACTIVE adapter (at start, then every ``every_s``)."""

    def __init__(self, model: ChatModel, registry: Registry, every_s: float,
                 say: Callable[[str], None]) -> None:
        self.model, self.registry, self.every_s, self.say = model, registry, every_s, say
        self._refused: str | None = None  # a broken ACTIVE is reported once, not every poll

    async def sync(self) -> bool:
        """Switch to ACTIVE if it changed; True when switched. A broken one keeps the current."""
        wanted = self.registry.active()
        if wanted == self.model.active_adapter or (wanted is not None
                                                   and wanted == self._refused):
            return False
        current = self.model.active_adapter or "base"
        try:
            path = self.registry.validate(wanted) if wanted else None
            await self.model.set_adapter(path, wanted)
        except (ModelError, OSError) as exc:
            self._refused = wanted
            log.error("ACTIVE points to %s but it cannot be loaded; serving %s: %s", wanted,
                      current, exc)
            self.say(f"Adapter {wanted} cannot be loaded; still serving {current} (see the log).")
            return False
        self._refused = None
        self.say(f"Serving adapter {wanted or 'base'} (ACTIVE; was {current}).")
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sync()
            except Exception:
                log.exception("following the active adapter failed")


@contextlib.asynccontextmanager
async def serving(cfg: Config, settings: ServeConfig,
                  say: Callable[[str], None] = say_err) -> AsyncIterator[OpenAIServer]:
    """The model on the ACTIVE adapter, served by an OpenAIServer, the follower running."""
    from llm.openai_server import OpenAIServer  # aiohttp's server only when serving
    from llm.serve.guard import check_bind

    key = cfg.secret(settings.api_key_env) or ""
    check_bind(settings.host, key, settings.api_key_env)  # before the model loads
    prepare_environment(cfg)
    registry = Registry(cfg.storage.path)
    model = await open_model(cfg.model, cfg.storage.path, say=say)
    try:
        follower = ActiveFollower(model, registry, settings.follow_active_s, say)
        await follower.sync()
        async with OpenAIServer(model, settings.host, settings.port, api_key=key,
                                defaults=cfg.model.gen_params(), settings=settings,
                                adapters_dir=registry.root) as server:
            task = asyncio.create_task(follower.run())
            try:
                yield server
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await model.aclose()


async def serve_openai(args: argparse.Namespace, cfg: Config) -> int:
    settings = serve_settings(args, cfg)
    async with serving(cfg, settings) as server:
        guarded = (f"API key required (${settings.api_key_env})" if server.api_key
                   else f"no API key (${settings.api_key_env} is not set), loopback only")
        say_err(f"Serving {server.model.name} at {server.base_url}, {guarded} (Ctrl+C to stop).")
        await asyncio.Event().wait()
    return 0
