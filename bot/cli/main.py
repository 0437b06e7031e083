"""``nightowl``: parse the arguments, load the config once, set up logging, run one subcommand.

The subcommands come from :data:`GROUPS`; each group module registers its parsers with the
function that runs them (``set_defaults(run=...)``), so there is no dispatch to keep in step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.cli import chat, console, kb, ops, training
from bot.config import load_config
from bot.core import USER_ERRORS
from bot.logs import RedactSecrets, setup_logging

EXIT_ERROR = 2
GROUPS = (chat, ops, kb, training, console)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nightowl",
        description="NightOwl: a self-hosted assistant for Telegram and Discord that learns "
                    "from its conversations every night.")
    p.add_argument("--config", help="config file (default: $NIGHTOWL_CONFIG or ./config.toml)")
    p.set_defaults(run=None, quiet=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nightowl`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run is None:
        parser.print_help()
        return 0
    redact = RedactSecrets([])
    try:
        cfg = load_config(args.config)
        redact = RedactSecrets(cfg.secret_values())
        setup_logging(cfg.logging, cfg.storage.path, cfg.secret_values(), quiet=args.quiet)
        return asyncio.run(args.run(args, cfg))
    except USER_ERRORS as exc:  # may quote a library's message that holds a token: redacted
        print(f"nightowl: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()
