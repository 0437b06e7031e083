"""Which adapters a client may load at runtime (vLLM's ``POST /v1/load_lora_adapter``).

Invariants:
* Only registry folders: ``lora_path`` (absolute, or relative to the registry) must resolve,
  symlinks followed, to ``<storage>/adapters/vNNNN``, and every file in it must resolve inside
  it. A server started without a registry loads nothing at runtime.
* A label is the folder's version (``lora_name`` = ``vNNNN``) and names those weights for the
  server's lifetime: asking for a loaded label with another folder is a conflict (409), never a
  re-point (the bot selects its adapter by label, so re-pointing one would swap what it answers
  with).
* At most ``[serve] max_adapters`` are loaded (429 beyond); loads are serialised, so two
  requests cannot both take the last place.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from llm.base import ChatModel
from llm.errors import ModelError
from llm.serve.guard import Refused

log = logging.getLogger("nightowl.serve")

VERSION_RE = re.compile(r"^v\d{4,}$")  # the registry's folder names (training.registry)


class RegistryAdapters:
    def __init__(self, model: ChatModel, root: Path | None, limit: int) -> None:
        self.model = model
        self.root = root.resolve() if root is not None else None
        self.limit = limit
        self._lock = asyncio.Lock()

    def folder(self, raw: str) -> Path:
        """The registry folder ``raw`` names, or Refused (the reply names no host path)."""
        if self.root is None:
            raise Refused(403, "this server loads no adapters at runtime (no registry)",
                          "permission_error")
        path = Path(raw)
        path = path if path.is_absolute() else self.root / path
        try:
            folder = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused(400, "lora_path is not an adapter of this server's registry") from None
        if folder.parent != self.root or not VERSION_RE.match(folder.name) or not folder.is_dir():
            log.warning("refused to load an adapter outside the registry: %s", path)
            raise Refused(400, "lora_path must be a version folder of this server's registry "
                          "(adapters/vNNNN)")
        for f in folder.rglob("*"):
            if not f.resolve().is_relative_to(folder):
                log.warning("refused adapter %s: %s points outside it", folder, f)
                raise Refused(400, f"adapter {folder.name} links to files outside its folder")
        return folder

    async def load(self, name: str, raw_path: str) -> str:
        """Load the registry adapter ``raw_path`` under ``name``; returns the label."""
        folder = self.folder(raw_path)
        async with self._lock:
            loaded = set(self.model.stats().get("loaded_adapters", []))
            if name in loaded and name != folder.name:
                raise Refused(409, f"adapter label {name!r} is already loaded with other "
                              "weights; a label is never re-pointed", "conflict_error")
            if name != folder.name:
                raise Refused(400, f"lora_name must be the version of the folder "
                              f"({folder.name!r})")
            if name not in loaded and len(loaded) >= self.limit:
                raise Refused(429, f"{len(loaded)} adapters are loaded, the most this server "
                              "keeps ([serve] max_adapters); restart it to free them",
                              "rate_limit_error")
            try:
                await self.model.load_adapter(folder, name)
            except ModelError as exc:
                log.warning("adapter %s could not be loaded: %s", name, exc)
                raise Refused(400, f"adapter {name} could not be loaded (see the server "
                              "log)") from None
        return name
