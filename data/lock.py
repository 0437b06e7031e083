"""Who uses a storage dir: serving processes share it, offline writers need it alone.

``nightowl run``, ``nightowl chat`` and the console hold a *shared* lock on ``<storage>/.lock``
for as long as they run; the CLI's knowledge-base writes (``ingest``, ``kb remove``, ``kb
reindex``) need it *exclusively*, so they are refused while a bot has the knowledge base open
(the bot's own ``/ingest`` goes through the running process instead). Locks are ``flock`` locks:
the kernel drops them when a process dies, ``kill -9`` included, so a crash never leaves the dir
locked. Each holder also writes ``<storage>/.lock.d/<pid>.json`` (role, start time) so a refusal
can say who is in the way; stale files of dead processes are ignored and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from data.errors import StoreError


@dataclass(frozen=True)
class Holder:
    pid: int
    role: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%H:%M", time.localtime(self.since))
        return f"{self.role} (pid {self.pid}, since {when})"


class StorageBusy(StoreError):
    """The storage dir is in use by another NightOwl process; ``holders`` says by whom."""

    def __init__(self, message: str, holders: list[Holder]) -> None:
        super().__init__(message)
        self.holders = holders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(storage: Path) -> list[Holder]:
    """The live processes that hold the storage lock (from their info files)."""
    out = []
    folder = storage / ".lock.d"
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
            h = Holder(int(raw["pid"]), str(raw["role"]), float(raw["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if h.pid != os.getpid() and _alive(h.pid):
            out.append(h)
        elif not _alive(h.pid):
            with contextlib.suppress(OSError):
                f.unlink()
    return out


@contextlib.contextmanager
def storage_lock(storage: Path, role: str, *, exclusive: bool = False,
                 refusal: str = "") -> Iterator[None]:
    """Hold the storage lock (shared, or ``exclusive``) for the block; raise :class:`StorageBusy`
    at once when it cannot be had. ``refusal`` is added to the message (what to do instead)."""
    storage.mkdir(parents=True, exist_ok=True)
    fh: IO[str] = (storage / ".lock").open("a+")
    info = storage / ".lock.d" / f"{os.getpid()}.json"
    try:
        try:
            fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            who = holders(storage)
            names = ", ".join(h.describe() for h in who) or "another NightOwl process"
            raise StorageBusy(f"{storage} is in use by {names}. {refusal}".strip(), who) from exc
        info.parent.mkdir(exist_ok=True)
        info.write_text(json.dumps({"pid": os.getpid(), "role": role, "since": time.time()}),
                        encoding="utf-8")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                info.unlink()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
