"""The adapter registry: ``<storage>/adapters/vNNNN/`` + ``meta.json`` and an atomic ACTIVE pointer.

A version folder appears only complete (staged under ``.staging-*`` and renamed into place). The
``ACTIVE`` file holds the active version (absent or ``base`` = no adapter) and is replaced with
``data.files.write_atomic`` (file and folder fsynced). Nothing is activated that
``llm.adapters.validate_adapter_dir`` (the check every backend runs before loading) refuses.

Invariants:

- A version's files are fsynced before it is registered, and the ``adapters/`` folder after the
  rename, so a registered version survives a power loss complete.
- Whoever reads ACTIVE to decide what to write into it (a rollback, a promotion, an approval)
  holds :meth:`Registry.pointer_lock`, a short cross-process ``flock`` on ``adapters/.ACTIVE.lock``
  that is separate from the training run's lock: a rollback never waits for a training run.
- Retention (:meth:`Registry.prune`) keeps the newest ``keep`` promoted versions, deletes rejected
  and failed ones first, and never deletes the active version, its rollback target or a
  candidate waiting for approval.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data.files import fsync_dir, write_atomic
from llm.adapters import validate_adapter_dir
from llm.base import BASE
from llm.errors import AdapterError

VERSION_RE = re.compile(r"^v(\d{4,})$")
PROMOTED = ("promoted", "active", "rolled-back-to")  # statuses of versions that once served
POINTER_WAIT_S = 0.05  # how often an async waiter retries the ACTIVE lock


@dataclass(frozen=True)
class AdapterInfo:
    version: str
    path: Path
    meta: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=1, ensure_ascii=False, default=str)


class Registry:
    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / "adapters"
        self.pointer = self.root / "ACTIVE"

    # ---- versions ------------------------------------------------------------------------
    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def path(self, version: str) -> Path:
        return self.root / version

    def next_version(self) -> str:
        versions = self.versions()
        n = int(versions[-1][1:]) + 1 if versions else 1
        return f"v{n:04d}"

    def meta(self, version: str) -> dict[str, Any]:
        try:
            data = json.loads((self.path(version) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def infos(self) -> list[AdapterInfo]:
        return [AdapterInfo(v, self.path(v), self.meta(v)) for v in self.versions()]

    def validate(self, version: str) -> Path:
        """The folder of a usable adapter, or AdapterError saying what is wrong."""
        if not VERSION_RE.match(version):
            raise AdapterError(f"{version!r} is not an adapter version (expected like v0003); "
                               "see `nightowl adapters`.")
        path = self.path(version)
        if not path.is_dir():
            raise AdapterError(f"adapter {version} does not exist ({path} is missing); see "
                               "`nightowl adapters` for the versions on disk.")
        try:
            validate_adapter_dir(path)
        except AdapterError as exc:
            raise AdapterError(f"adapter {version} is incomplete or corrupt: {exc} Choose "
                               "another version.") from exc
        return path

    # ---- writing ---------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def register(self, staged: Path, meta: dict[str, Any]) -> str:
        """Move a staged adapter folder into the next version with its meta.json; return it."""
        version = self.next_version()
        meta = {**meta, "version": version, "created_at": meta.get("created_at", time.time())}
        _fsync_tree(staged)  # the weights are on disk before the version exists
        write_atomic(staged / "meta.json", _meta_json(meta))
        os.replace(staged, self.path(version))  # a folder appears complete, or not at all
        fsync_dir(self.root)
        return version

    def update_meta(self, version: str, **changes: Any) -> None:
        meta = {**self.meta(version), **changes}
        write_atomic(self.path(version) / "meta.json", _meta_json(meta))

    def clean_staging(self) -> None:
        if self.root.is_dir():
            for p in self.root.glob(".staging-*"):
                shutil.rmtree(p, ignore_errors=True)

    # ---- the active pointer ------------------------------------------------------------------
    @contextlib.contextmanager
    def pointer_lock(self) -> Iterator[None]:
        """Hold the ACTIVE pointer's cross-process lock (blocking; holders keep it briefly)."""
        fh = self._open_lock()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fh.close()  # closing drops the flock

    @contextlib.asynccontextmanager
    async def pointer_lock_async(self) -> AsyncIterator[None]:
        """:meth:`pointer_lock` for the event loop: waits without blocking it (and without a
        thread that could take the lock after its waiter was cancelled)."""
        fh = self._open_lock()
        try:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(POINTER_WAIT_S)
            yield
        finally:
            fh.close()

    def _open_lock(self) -> IO[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        return (self.root / ".ACTIVE.lock").open("a+")

    def active(self) -> str | None:
        try:
            value = self.pointer.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return None if value in ("", BASE) else value

    def set_active(self, version: str | None) -> None:
        """Point ACTIVE at ``version`` (validated) or at the base model; atomic."""
        if version is not None:
            self.validate(version)
        write_atomic(self.pointer, (version or BASE) + "\n")

    def previous(self, before: str | None) -> str | None:
        """The newest promoted version older than ``before`` (None = base)."""
        versions = self.versions()
        if before is None:
            return None
        older = [v for v in versions if int(v[1:]) < int(before[1:])]
        for v in reversed(older):
            if self.meta(v).get("status") in ("promoted", "active", "rolled-back-to"):
                return v
        return None

    def plan_rollback(self, version: str | None = None) -> tuple[str | None, str | None]:
        """(current, target) for a rollback to ``version`` (default: the previous promoted one,
        ``base`` = no adapter). Raises AdapterError for missing or corrupt folders."""
        old = self.active()
        if version in (None, ""):
            if old is None:
                raise AdapterError("the base model is already active; nothing to roll back.")
            target = self.previous(old)
        elif version == BASE:
            target = None
        else:
            target = version
        if target is not None:
            self.validate(target)
        return old, target

    def rollback(self, version: str | None = None) -> tuple[str | None, str | None]:
        """Activate ``version`` (or the previous promoted one); returns (old, new).

        Refuses missing or corrupt folders with AdapterError and keeps the current pointer.
        """
        with self.pointer_lock():
            old, target = self.plan_rollback(version)
            self.set_active(target)
        return old, target

    # ---- retention -------------------------------------------------------------------------
    def prune(self, keep: int) -> list[str]:
        """Keep at most ``keep`` versions besides the protected ones, promoted ones first.

        Protected (never deleted): the active version, its rollback target (the previous
        promoted one) and candidates waiting for approval. Of the rest, the newest ``keep``
        promoted versions stay; the remaining room goes to the newest rejected or failed ones.
        Returns the deleted versions, oldest first.
        """
        if keep <= 0:
            return []
        fh = self._open_lock()
        try:
            try:  # a rollback cannot pick a version while it is deleted; never wait for one
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # the next run prunes
            active = self.active()
            infos = self.infos()
            protected = {active, self.previous(active)} | {
                i.version for i in infos if i.status == "waiting"}
            rest = [i for i in infos if i.version not in protected]
            promoted = [i.version for i in rest if i.status in PROMOTED][-keep:]
            room = max(keep - len(promoted), 0)
            others = [i.version for i in rest if i.status not in PROMOTED]
            kept = set(promoted) | set(others[len(others) - room:] if room else [])
            doomed = [i.version for i in rest if i.version not in kept]
            for v in doomed:
                shutil.rmtree(self.path(v), ignore_errors=True)
        finally:
            fh.close()
        return doomed

    def describe(self) -> str:
        active = self.active()
        infos = self.infos()
        if not infos:
            return "No adapters trained yet (the base model answers)."
        lines = []
        for info in infos:
            m = info.meta
            ev = (m.get("scores") or {}).get("heldout", {}).get("candidate", {})
            loss = f" eval loss {ev['loss']:.3f}" if isinstance(ev.get("loss"), float) else ""
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("created_at", 0)))
            mark = "* " if info.version == active else "  "
            lines.append(f"{mark}{info.version}  {info.status:<9} {when}  parent "
                         f"{m.get('parent') or 'base'}  {m.get('examples', '?')} examples{loss}")
        lines.append(f"Active: {active or 'base model'}")
        return "\n".join(lines)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
