"""The knowledge base from the command line: ``nightowl ingest`` and ``nightowl kb
list|remove|reindex``.

Each ``cmd_*`` function takes an open :class:`rag.knowledge.Knowledge`, prints through ``out``
and returns the process exit code; the subcommands open the store and the knowledge base around
it (no model is loaded).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from bot.app import open_store
from bot.cli.common import Subparsers
from bot.config import Config
from data.lock import storage_lock
from rag.base import IngestResult
from rag.errors import KnowledgeError
from rag.knowledge import Knowledge, open_knowledge

Out = Callable[[str], None]


def register(sub: Subparsers) -> None:
    ing = sub.add_parser("ingest", help="add files or folders to the knowledge base")
    ing.add_argument("paths", nargs="+")
    ing.add_argument("--glob", action="append", default=[],
                     help="only files matching this pattern (repeatable), e.g. '*.md'")
    ing.set_defaults(run=ingest)
    kb = sub.add_parser("kb", help="knowledge base: list, remove, reindex")
    kbsub = kb.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    kbsub.add_parser("list", help="list ingested sources").set_defaults(run=kb_list)
    rm = kbsub.add_parser("remove", help="remove a source and its chunks")
    rm.add_argument("source")
    rm.set_defaults(run=kb_remove)
    kbsub.add_parser("reindex", help="re-embed every chunk (after changing embedding_model)"
                     ).set_defaults(run=kb_reindex)


BOT_RUNNING = ("The command line changes the knowledge base only while no bot has it open: "
               "stop the bot first, or send the file to it with /ingest (as an admin).")


async def ingest(args: argparse.Namespace, cfg: Config) -> int:
    return await with_kb(cfg, lambda kb: cmd_ingest(kb, args.paths, args.glob), write=True)


async def kb_list(args: argparse.Namespace, cfg: Config) -> int:
    return await with_kb(cfg, cmd_kb_list)


async def kb_remove(args: argparse.Namespace, cfg: Config) -> int:
    return await with_kb(cfg, lambda kb: cmd_kb_remove(kb, args.source), write=True)


async def kb_reindex(args: argparse.Namespace, cfg: Config) -> int:
    return await with_kb(cfg, cmd_kb_reindex, write=True)


async def with_kb(cfg: Config, action: Callable[[Knowledge], Awaitable[int]], *,
                  write: bool = False) -> int:
    """Run ``action`` on the knowledge base, opened (and closed) around it. A ``write`` needs the
    storage dir to itself (:mod:`data.lock`): refused while a bot or chat has it open."""
    lock = (storage_lock(cfg.storage.path, "nightowl kb", exclusive=True, refusal=BOT_RUNNING)
            if write else contextlib.nullcontext())
    with lock:
        async with open_store(cfg) as store:
            kb = await open_knowledge(cfg, store)
            try:
                return int(await action(kb))
            finally:
                await kb.aclose()


async def cmd_ingest(kb: Knowledge, paths: list[str], globs: list[str] | None = None,
                     out: Out = print, by: str = "cli") -> int:
    """One line per file, then a summary. Exit 0 if every path existed and at least one file
    is in the knowledge base (added, replaced or unchanged); 1 otherwise. Skipped files are
    reported but do not fail the batch."""
    if not paths:
        out("nothing to ingest: give files or folders, e.g. `nightowl ingest docs/`")
        return 2

    def show(res: IngestResult) -> None:
        out(res.line())

    results = await kb.ingest([Path(p) for p in paths], by=by, progress=show, globs=globs or ())
    counts = Counter(r.status for r in results)
    missing = [r for r in results if r.reason == "not found"]
    if not results:
        out("no files matched" + (f" the globs {' '.join(globs)}" if globs else ""))
        return 1
    out(", ".join(f"{counts[s]} {s}" for s in ("added", "replaced", "unchanged", "skipped"))
        + f"; {await kb.count()} chunks in the knowledge base")
    ok = counts["added"] + counts["replaced"] + counts["unchanged"]
    return 0 if ok and not missing else 1


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


async def cmd_kb_list(kb: Knowledge, out: Out = print) -> int:
    rows = await kb.sources()
    if kb.needs_reindex:
        out(f"⚠️ indexed with {kb.indexed_with!r} but [rag] embedding_model is "
            f"{kb.embedder.name!r}: run `nightowl kb reindex`")
    if not rows:
        out("The knowledge base is empty. Add documents with `nightowl ingest PATH`.")
        return 0
    out(f"{'CHUNKS':>6}  {'SIZE':>9}  {'INGESTED':16}  {'BY':14}  SOURCE")
    for r in rows:
        out(f"{r.chunks:>6}  {r.size:>9,}  {_when(r.ingested_at):16}  "
            f"{r.ingested_by[:14]:14}  {r.source}")
    out(f"{len(rows)} sources, {sum(r.chunks for r in rows)} chunks")
    return 0


async def cmd_kb_remove(kb: Knowledge, sources: str | list[str], out: Out = print) -> int:
    """Remove one source (``str``) or several; exit 1 if any was not found."""
    code = 0
    for source in [sources] if isinstance(sources, str) else sources:
        try:
            removed = await kb.remove(source)
        except KnowledgeError as exc:
            out(f"not removed: {exc}")
            code = 1
            continue
        if removed:
            out(f"removed: {source}")
        else:
            out(f"not found: {source} (see `nightowl kb list` for the names)")
            code = 1
    return code


def progress_bar(stream: TextIO, width: int = 30) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback drawing a bar (redrawn in place on a terminal)."""
    tty = stream.isatty()
    last = [-1]

    def draw(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if not tty and pct < 100 and pct - last[0] < 10:
            return
        last[0] = pct
        fill = width * pct // 100
        line = f"reindex [{'#' * fill}{'.' * (width - fill)}] {done}/{total} chunks {pct:3d}%"
        stream.write(("\r" + line) if tty else line + "\n")
        if tty and done >= total:
            stream.write("\n")
        stream.flush()

    return draw


async def cmd_kb_reindex(kb: Knowledge, out: Out = print, stream: TextIO | None = None) -> int:
    started = time.monotonic()
    count = await kb.reindex(progress_bar(stream or sys.stderr))
    out(f"reindexed {count} chunks with {kb.embedder.name} in {time.monotonic() - started:.1f} s")
    return 0
