"""``nightowl chat`` and ``nightowl ask``: the terminal platform on the full services."""

from __future__ import annotations

import argparse
import json
import sys

from bot.app import open_services
from bot.cli.common import Subparsers, say, say_err
from bot.config import Config
from bot.core import CollectingRenderer
from bot.terminal.chat import TerminalChat, TerminalRenderer, interactive_reader
from data.lock import storage_lock


def register(sub: Subparsers) -> None:
    sub.add_parser("chat", help="chat in the terminal (interactive, or one message per line "
                                "when piped)").set_defaults(run=run_chat, quiet=True)
    ask = sub.add_parser("ask", help="answer one question and exit")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object: answer, sources, adapter, latency_s")
    ask.set_defaults(run=run_ask, quiet=True)


async def run_chat(args: argparse.Namespace, cfg: Config) -> int:
    interactive = sys.stdin.isatty()
    with storage_lock(cfg.storage.path, "nightowl chat"):
        async with open_services(cfg, say=say if interactive else say_err) as svc:
            chat = TerminalChat(svc.core, interactive=interactive,
                                read_line=interactive_reader if interactive else None)
            return await chat.run()


async def run_ask(args: argparse.Namespace, cfg: Config) -> int:
    async with open_services(cfg, say=say_err) as svc:
        chat = TerminalChat(svc.core)
        if args.json:
            renderer = CollectingRenderer()
            reply = await svc.core.handle(chat.incoming(args.question), renderer)
            print(json.dumps({"answer": reply.answer or reply.text, "text": reply.text,
                              "sources": reply.sources, "adapter": reply.adapter,
                              "model": reply.model, "latency_s": round(reply.latency_s, 3),
                              "notices": reply.notices}, ensure_ascii=False))
        else:
            await svc.core.handle(chat.incoming(args.question), TerminalRenderer(sys.stdout))
    return 0
