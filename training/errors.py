"""The learning loop's errors. Every message says how to fix the problem."""

from __future__ import annotations

from data.errors import StoreError
from llm.errors import ModelError
from rag.errors import KnowledgeError


class TrainingError(Exception):
    """A training cycle could not run."""


class ProbeError(TrainingError):
    """The probes file or a /probe command cannot be used as given."""


# What a learning cycle can meet that an operator can act on (shown as a message, not a trace).
LOOP_ERRORS: tuple[type[Exception], ...] = (TrainingError, ModelError, KnowledgeError, StoreError)
