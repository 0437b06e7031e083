"""``[storage]``: where all runtime state lives (the database, Chroma, models, adapters, runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StorageConfig:
    dir: str = "var"

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser()
