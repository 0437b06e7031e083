"""The learning loop from the command line: ``train``, ``adapters``, ``rollback``, ``export``,
``export-model``.

Each ``cmd_*`` function takes the settings (and the store where it reads conversations), prints
its result and returns the process exit code; the subcommands open what it needs around it.
``train`` and ``export`` apply the same moderation guard as the running bot.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bot.app import open_store
from bot.cli.common import Subparsers, in_thread
from bot.config import Config
from bot.core.moderation import build_guard
from llm.embedded import EMBEDDED, gguf_path, resolve_model_path
from training.config import LearningSettings
from training.cycle import run_cycle
from training.dataset import ContentGuard, export_jsonl
from training.errors import LOOP_ERRORS
from training.export import GGUF_HELP, export_gguf, export_merged
from training.registry import Registry


def register(sub: Subparsers) -> None:
    sub.add_parser("train", help="run one learning cycle now").set_defaults(run=train)
    sub.add_parser("adapters", help="list adapter versions and which is active"
                   ).set_defaults(run=adapters)
    rb = sub.add_parser("rollback", help="make an earlier adapter active")
    rb.add_argument("version", nargs="?", help="e.g. v0002 (default: the previous one); "
                                               "'base' for no adapter")
    rb.set_defaults(run=rollback)
    ex = sub.add_parser("export", help="write the training dataset as JSONL")
    ex.add_argument("--out", default=None, help="output file (default: under storage/runs)")
    ex.set_defaults(run=export)
    em = sub.add_parser("export-model", help="export the active adapter merged into the base "
                                             "(16-bit safetensors)")
    em.add_argument("out_dir")
    em.add_argument("--gguf", action="store_true", help="also write a GGUF file")
    # Accepted for old scripts: the merged weights are what export-model always writes.
    em.add_argument("--merged", action="store_true", help=argparse.SUPPRESS)
    em.set_defaults(run=export_model)


async def train(args: argparse.Namespace, cfg: Config) -> int:
    async with open_store(cfg) as store:
        return await cmd_train(cfg, store, build_guard(cfg.moderation))


async def adapters(args: argparse.Namespace, cfg: Config) -> int:
    return await in_thread(cmd_adapters, cfg)


async def rollback(args: argparse.Namespace, cfg: Config) -> int:
    return await in_thread(cmd_rollback, cfg, args.version)


async def export(args: argparse.Namespace, cfg: Config) -> int:
    async with open_store(cfg) as store:
        return await cmd_export(cfg, store, args.out, build_guard(cfg.moderation))


async def export_model(args: argparse.Namespace, cfg: Config) -> int:
    return await in_thread(cmd_export_model, cfg, args.out_dir, args.gguf)


async def cmd_train(cfg: LearningSettings, store: Any, guard: ContentGuard | None = None) -> int:
    """``nightowl train``: one learning cycle now; exit 0 also when not promoted (says why)."""
    result = await run_cycle(cfg, store, trigger="cli", say=print, guard=guard)
    if result.status == "skipped" and not result.run_id:  # refused before a run started
        print(f"Training not started: {result.summary}")
    if result.plot is not None:
        print(f"Plot: {result.plot}")
    if result.status == "promoted":
        print("A running `nightowl run` switches to it within about 10 seconds.")
    return 1 if result.status == "failed" else 0


def cmd_adapters(cfg: LearningSettings) -> int:
    """``nightowl adapters``: versions, status, parent, eval loss; the active one marked *."""
    print(Registry(cfg.storage.path).describe())
    return 0


def cmd_rollback(cfg: LearningSettings, version: str | None) -> int:
    """``nightowl rollback [VERSION]``: activate VERSION, the previous promoted one, or ``base``."""
    try:
        old, new = Registry(cfg.storage.path).rollback(version)
    except LOOP_ERRORS as exc:
        print(f"Rollback refused: {exc}", file=sys.stderr)
        return 1
    print(f"Active adapter is now {new or 'the base model'} (was {old or 'base'}). A running "
          "`nightowl run` switches within about 10 seconds.")
    return 0


async def cmd_export(cfg: LearningSettings, store: Any, out: str | Path | None,
                     guard: ContentGuard | None = None) -> int:
    """``nightowl export [--out FILE]``: the training examples as messages JSONL."""
    path = Path(out) if out else cfg.storage.path / "exports" / \
        f"dataset-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    n, report = await export_jsonl(cfg, store, path, guard=guard)
    print(f"Wrote {n} examples to {path} (messages JSONL for LLaMA-Factory/axolotl).")
    print(report.summary())
    return 0


def cmd_export_model(cfg: LearningSettings, out_dir: str | Path, gguf: bool) -> int:
    """``nightowl export-model DIR [--gguf]``: merged 16-bit weights, verified.

    ``--gguf`` also writes ``DIR/nightowl-VERSION-f16.gguf`` (embedded model only; the merged
    weights in DIR are its source)."""
    if gguf and cfg.model.name != EMBEDDED:
        print(GGUF_HELP, file=sys.stderr)
        return 1
    registry = Registry(cfg.storage.path)
    version = registry.active()
    if version is None:
        print("No adapter is active: the base model is unchanged, nothing to merge. Train one "
              "with `nightowl train` or choose one with `nightowl rollback VERSION`.",
              file=sys.stderr)
        return 1
    try:
        adapter = registry.validate(version)
        model_path = resolve_model_path(cfg.model.name, cfg.storage.path, print)
        export_merged(model_path, adapter, Path(out_dir))
        if gguf:
            export_gguf(Path(out_dir), Path(out_dir) / f"nightowl-{version}-f16.gguf",
                        gguf_path())
    except LOOP_ERRORS as exc:
        print(f"export-model failed: {exc}", file=sys.stderr)
        return 1
    return 0

