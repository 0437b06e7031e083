"""NightOwl's small exception hierarchy. Every message says how to fix the problem."""

from __future__ import annotations


class NightOwlError(Exception):
    """Base class: a problem the user or operator can act on."""


class ConfigError(NightOwlError):
    """The config file is missing, malformed, or has an invalid value."""


class StoreError(NightOwlError):
    """The SQLite store cannot be opened or is inconsistent."""


class ModelError(NightOwlError):
    """The model cannot be loaded or cannot answer."""


class BusyError(ModelError):
    """The model queue is full; try again later."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class AdapterError(ModelError):
    """A LoRA adapter directory is missing or corrupt."""


class KnowledgeError(NightOwlError):
    """Ingestion or retrieval failed."""


class TrainingError(NightOwlError):
    """A training cycle could not run."""


class NotAllowedError(NightOwlError):
    """The sender may not run this command."""


class InputError(NightOwlError):
    """The user's input cannot be processed as given."""
