"""``nightowl console [--host H] [--port P]`` and ``nightowl console passwd [--name NAME]``.

The console needs no platform token: it opens the same services as ``nightowl run`` (store,
model, knowledge, learning, core) and serves until SIGINT/SIGTERM. ``passwd`` reads the password
twice from the terminal, or one line from standard input when that is not a terminal (scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import signal
import sys

from bot.app import open_services, prepare_environment
from bot.cli.common import Subparsers, say
from bot.config import Config
from bot.console.app import check_bind
from bot.console.auth import PasswordFile
from bot.console.server import Console
from bot.core.errors import ConfigError


def register(sub: Subparsers) -> None:
    p = sub.add_parser("console", help="serve the web console (needs `nightowl console passwd`)")
    p.add_argument("--host", help="address to listen on (default: [console] host, 127.0.0.1); "
                   "any other than loopback needs [console] allow_remote = true")
    p.add_argument("--port", type=int, help="port (default: [console] port, 8765)")
    p.set_defaults(run=serve)
    csub = p.add_subparsers(dest="console_command", metavar="ACTION")
    pw = csub.add_parser("passwd", help="set a console admin's password (stored as a bcrypt "
                         "hash in the storage dir)")
    pw.add_argument("--name", default="admin", help="admin name (default: admin)")
    pw.set_defaults(run=passwd)


def read_password(stdin: object = None) -> str:
    """Twice from a terminal; else the first line of standard input."""
    stream = stdin or sys.stdin
    if not getattr(stream, "isatty", lambda: False)():
        line = stream.readline()  # type: ignore[union-attr]
        return str(line).rstrip("\r\n")
    first = getpass.getpass("New console password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise ConfigError("the two passwords differ; nothing was changed. Run it again.")
    return first


async def passwd(args: argparse.Namespace, cfg: Config) -> int:
    prepare_environment(cfg)
    password = read_password()
    files = PasswordFile(cfg.storage.path)
    await asyncio.to_thread(files.set, args.name, password)
    say(f"Console password set for {args.name!r} ({files.path}). Start it with "
        "`nightowl console` and log in.")
    return 0


async def serve(args: argparse.Namespace, cfg: Config) -> int:
    console_cfg = dataclasses.replace(
        cfg.console, host=args.host if args.host is not None else cfg.console.host,
        port=args.port if args.port is not None else cfg.console.port)
    check_bind(console_cfg)  # before loading the model: a refused bind fails fast
    cfg = cfg.replace(console=console_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with open_services(cfg, say=say) as svc, Console(svc.core, cfg) as console:
        say(f"NightOwl console: {console.url}")
        if not console.has_admin:
            say("No console admin yet: run `nightowl console passwd` to set a password.")
        say("Press Ctrl+C to stop.")
        await stop.wait()
    return 0
