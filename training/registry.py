"""The adapter registry: ``<storage>/adapters/vNNNN/`` + ``meta.json`` and an atomic ACTIVE pointer.

A version folder appears only complete (staged under ``.staging-*`` and renamed into place). The
``ACTIVE`` file holds the active version (absent or ``base`` = no adapter) and is replaced with
``data.files.write_atomic``. Nothing is activated that ``llm.adapters.validate_adapter_dir`` (the
check every backend runs before loading) refuses. Retention keeps the newest N versions and never
deletes the active one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.files import fsync_dir, write_atomic
from llm.adapters import validate_adapter_dir
from llm.base import BASE
from llm.errors import AdapterError

VERSION_RE = re.compile(r"^v(\d{4,})$")


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
        old, target = self.plan_rollback(version)
        self.set_active(target)
        return old, target

    # ---- retention -------------------------------------------------------------------------
    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; never the active one."""
        active = self.active()
        versions = self.versions()
        doomed = [v for v in versions[:-keep] if v != active] if keep > 0 else []
        for v in doomed:
            shutil.rmtree(self.path(v), ignore_errors=True)
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
