"""``nightowl`` command line: parses arguments, loads the config once, runs one command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

from bot.config import Config, load_config
from bot.errors import USER_ERRORS, NightOwlError
from bot.logs import setup_logging

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nightowl",
        description="NightOwl: a self-hosted assistant for Telegram and Discord that learns "
                    "from its conversations every night.")
    p.add_argument("--config", help="config file (default: $NIGHTOWL_CONFIG or ./config.toml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("chat", help="chat in the terminal (interactive, or one message per line "
                                "when piped)")
    ask = sub.add_parser("ask", help="answer one question and exit")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object: answer, sources, adapter, latency_s")
    sub.add_parser("run", help="run the Telegram/Discord bots and the nightly training")
    sub.add_parser("status", help="show model, adapter, knowledge base and training status")
    ing = sub.add_parser("ingest", help="add files or folders to the knowledge base")
    ing.add_argument("paths", nargs="+")
    ing.add_argument("--glob", action="append", default=[],
                     help="only files matching this pattern (repeatable), e.g. '*.md'")
    kb = sub.add_parser("kb", help="knowledge base: list, remove, reindex")
    kbsub = kb.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    kbsub.add_parser("list", help="list ingested sources")
    rm = kbsub.add_parser("remove", help="remove a source and its chunks")
    rm.add_argument("source")
    kbsub.add_parser("reindex", help="re-embed every chunk (after changing embedding_model)")
    sub.add_parser("train", help="run one learning cycle now")
    sub.add_parser("adapters", help="list adapter versions and which is active")
    rb = sub.add_parser("rollback", help="make an earlier adapter active")
    rb.add_argument("version", nargs="?", help="e.g. v0002 (default: the previous one); "
                                               "'base' for no adapter")
    ex = sub.add_parser("export", help="write the training dataset as JSONL")
    ex.add_argument("--out", default=None, help="output file (default: under storage/runs)")
    em = sub.add_parser("export-model", help="export the active adapter merged into the base")
    em.add_argument("out_dir")
    em.add_argument("--merged", action="store_true", default=True,
                    help="merged 16-bit safetensors (default)")
    em.add_argument("--gguf", action="store_true", help="also write a GGUF file")
    bk = sub.add_parser("backup", help="copy the database with SQLite's online backup API")
    bk.add_argument("path")
    rs = sub.add_parser("restore", help="replace the database with a backup (bot stopped)")
    rs.add_argument("path")
    so = sub.add_parser("serve-openai", help="serve the model over an OpenAI-compatible API")
    so.add_argument("--host", default="127.0.0.1")
    so.add_argument("--port", type=int, default=8000)
    return p


async def _chat(cfg: Config) -> int:
    from bot.app import open_services
    from bot.terminal import TerminalChat, interactive_reader

    interactive = sys.stdin.isatty()
    say = _say if interactive else _say_err
    async with open_services(cfg, say=say) as svc:
        chat = TerminalChat(svc.core, interactive=interactive,
                            read_line=interactive_reader if interactive else None)
        return await chat.run()


async def _ask(cfg: Config, question: str, as_json: bool) -> int:
    from bot.app import open_services
    from bot.messages import CollectingRenderer
    from bot.terminal import TerminalChat, TerminalRenderer

    async with open_services(cfg, say=_say_err) as svc:
        chat = TerminalChat(svc.core)
        if as_json:
            renderer = CollectingRenderer()
            reply = await svc.core.handle(chat.incoming(question), renderer)
            print(json.dumps({"answer": reply.answer or reply.text, "text": reply.text,
                              "sources": reply.sources, "adapter": reply.adapter,
                              "model": reply.model, "latency_s": round(reply.latency_s, 3),
                              "notices": reply.notices}, ensure_ascii=False))
        else:
            await svc.core.handle(chat.incoming(question), TerminalRenderer(sys.stdout))
    return 0


async def _status(cfg: Config) -> int:
    """Status without loading the model: store, adapters, knowledge base, last training run."""
    from bot.app import open_store
    from training.registry import Registry

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


async def _with_store(cfg: Config, fn: Callable[..., Awaitable[int]],
                      *args: object) -> int:
    from bot.app import open_store

    async with open_store(cfg) as store:
        return await fn(cfg, store, *args)


async def _with_kb(cfg: Config, action: str, *args: object) -> int:
    from bot.app import open_store
    from rag import cli as rag_cli
    from rag.knowledge import open_knowledge

    async with open_store(cfg) as store:
        kb = await open_knowledge(cfg, store)
        try:
            fn = getattr(rag_cli, action)
            return int(await fn(kb, *args))
        finally:
            await kb.aclose()


async def _backup(cfg: Config, path: str) -> int:
    from bot.app import open_store

    async with open_store(cfg) as store:
        await store.backup(path)
    print(f"Backed up {cfg.storage.path / 'nightowl.db'} to {path}.")
    return 0


async def _restore(cfg: Config, path: str) -> int:
    from bot.app import db_path, prepare_environment
    from data.store import Store

    src = Path(path)
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


async def _serve_openai(cfg: Config, host: str, port: int) -> int:
    from bot.app import prepare_environment
    from llm.factory import open_model
    from llm.openai_server import serve_openai

    prepare_environment(cfg)
    model = await open_model(cfg.model, cfg.storage.path, say=_say_err)
    defaults = cfg.model.gen_params()
    _say_err(f"Serving {model.name} at http://{host}:{port}/v1 (Ctrl+C to stop).")
    try:
        await serve_openai(model, host, port, defaults=defaults)
    finally:
        await model.aclose()
    return 0


async def _sync(fn: Callable[..., int], cfg: Config, *args: object) -> int:
    """Run a blocking command function ``fn(cfg, *args)`` in a thread (dispatch stays async)."""
    from bot.app import prepare_environment

    prepare_environment(cfg)
    return await asyncio.to_thread(fn, cfg, *args)


def _say(text: str) -> None:
    print(text, flush=True)


def _say_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def dispatch(args: argparse.Namespace, cfg: Config) -> Coroutine[object, object, int]:
    cmd = args.command
    if cmd == "chat":
        return _chat(cfg)
    if cmd == "ask":
        return _ask(cfg, args.question, args.json)
    if cmd == "run":
        from bot.app import run_platforms

        return run_platforms(cfg)
    if cmd == "status":
        return _status(cfg)
    if cmd == "ingest":
        return _with_kb(cfg, "cmd_ingest", args.paths, args.glob)
    if cmd == "kb":
        action = {"list": "cmd_kb_list", "remove": "cmd_kb_remove",
                  "reindex": "cmd_kb_reindex"}[args.kb_command]
        extra = (args.source,) if args.kb_command == "remove" else ()
        return _with_kb(cfg, action, *extra)
    if cmd in ("train", "adapters", "rollback", "export", "export-model"):
        from bot.moderation import build_guard
        from training import cli as tcli

        if cmd == "train":
            return _with_store(cfg, tcli.cmd_train, build_guard(cfg.moderation))
        if cmd == "adapters":
            return _sync(tcli.cmd_adapters, cfg)
        if cmd == "rollback":
            return _sync(tcli.cmd_rollback, cfg, args.version)
        if cmd == "export":
            return _with_store(cfg, tcli.cmd_export, args.out, build_guard(cfg.moderation))
        return _sync(tcli.cmd_export_model, cfg, args.out_dir, args.merged, args.gguf)
    if cmd == "backup":
        return _backup(cfg, args.path)
    if cmd == "restore":
        return _restore(cfg, args.path)
    if cmd == "serve-openai":
        return _serve_openai(cfg, args.host, args.port)
    raise NightOwlError(f"unknown command {cmd!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nightowl`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        cfg = load_config(args.config)
        setup_logging(cfg, quiet=args.command in ("chat", "ask"))
        return asyncio.run(dispatch(args, cfg))
    except USER_ERRORS as exc:
        print(f"nightowl: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
