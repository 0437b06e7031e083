"""CLI entry functions ``bot/cli.py`` calls for the training commands. Each returns an exit code."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from training.config import LearningSettings
from training.dataset import ContentGuard
from training.errors import LOOP_ERRORS
from training.registry import Registry


async def cmd_train(cfg: LearningSettings, store: Any, guard: ContentGuard | None = None) -> int:
    """``nightowl train``: one learning cycle now; exit 0 also when not promoted (says why)."""
    from training.cycle import run_cycle

    result = await run_cycle(cfg, store, trigger="cli", say=print, guard=guard)
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
    from training.dataset import export_jsonl

    path = Path(out) if out else cfg.storage.path / "exports" / \
        f"dataset-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    n, report = await export_jsonl(cfg, store, path, guard=guard)
    print(f"Wrote {n} examples to {path} (messages JSONL for LLaMA-Factory/axolotl).")
    print(report.summary())
    return 0


def cmd_export_model(cfg: LearningSettings, out_dir: str | Path, merged: bool, gguf: bool) -> int:
    """``nightowl export-model --merged DIR [--gguf]``: merged 16-bit weights, verified.

    ``--gguf`` also writes ``DIR/nightowl-VERSION-f16.gguf`` (embedded model only; the merged
    weights in DIR are its source)."""
    from llm.embedded import EMBEDDED, gguf_path, resolve_model_path
    from training.export import GGUF_HELP, export_gguf, export_merged

    if not merged and not gguf:
        print("Nothing to do: pass --merged (and optionally --gguf).", file=sys.stderr)
        return 2
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

