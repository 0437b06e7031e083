"""What every command group shares: how a subcommand is run, and where its output goes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from bot.app import prepare_environment
from bot.config import Config

# A subcommand: the parsed arguments and the loaded config in, the exit code out.
Run = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]
Subparsers = Any  # argparse's _SubParsersAction (private type)


def say(text: str) -> None:
    print(text, flush=True)


def say_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def in_thread(fn: Callable[..., int], cfg: Config, *args: object) -> int:
    """Run a blocking command function ``fn(cfg, *args)`` in a thread (the loop stays free)."""
    prepare_environment(cfg)
    return await asyncio.to_thread(fn, cfg, *args)
