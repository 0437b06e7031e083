"""The model service's errors. Every message says how to fix the problem."""

from __future__ import annotations


class ModelError(Exception):
    """The model cannot be loaded or cannot answer."""


class BusyError(ModelError):
    """The model queue is full; try again later."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class AdapterError(ModelError):
    """A LoRA adapter directory is missing or corrupt."""
