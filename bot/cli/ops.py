"""Running and operating NightOwl: ``run``, ``status``, ``backup``, ``restore``,
``serve-openai``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.app import db_path, open_store, prepare_environment, run_platforms
from bot.cli.common import Subparsers, say_err
from bot.config import Config
from bot.core import NightOwlError
from data.store import Store
from llm.factory import open_model
from training.registry import Registry


def register(sub: Subparsers) -> None:
    sub.add_parser("run", help="run the Telegram/Discord bots and the nightly training"
                   ).set_defaults(run=run)
    sub.add_parser("status", help="show model, adapter, knowledge base and training status"
                   ).set_defaults(run=status)
    bk = sub.add_parser("backup", help="copy the database with SQLite's online backup API")
    bk.add_argument("path")
    bk.set_defaults(run=backup)
    rs = sub.add_parser("restore", help="replace the database with a backup (bot stopped)")
    rs.add_argument("path")
    rs.set_defaults(run=restore)
    so = sub.add_parser("serve-openai", help="serve the model over an OpenAI-compatible API")
    so.add_argument("--host", default="127.0.0.1")
    so.add_argument("--port", type=int, default=8000)
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


async def restore(args: argparse.Namespace, cfg: Config) -> int:
    src = Path(args.path)
    if not src.exists():
        raise NightOwlError(f"backup {src} not found")
    async with Store(src) as backup_store:
        check = await backup_store.integrity_check()
        if check != "ok":
            raise NightOwlError(f"backup {src} fails the integrity check ({check}); not restored")
        prepare_environment(cfg)
        dest = db_path(cfg)
        tmp = dest.with_suffix(".restoring")
        await backup_store.backup(tmp)
    for suffix in ("-wal", "-shm"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
    tmp.replace(dest)
    print(f"Restored {dest} from {src}.")
    return 0


async def serve_openai(args: argparse.Namespace, cfg: Config) -> int:
    from llm.openai_server import serve_openai as serve  # aiohttp's server only when serving

    prepare_environment(cfg)
    model = await open_model(cfg.model, cfg.storage.path, say=say_err)
    say_err(f"Serving {model.name} at http://{args.host}:{args.port}/v1 (Ctrl+C to stop).")
    try:
        await serve(model, args.host, args.port, defaults=cfg.model.gen_params())
    finally:
        await model.aclose()
    return 0
