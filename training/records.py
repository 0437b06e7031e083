"""The ids a dataset record carries (``meta``), by which ``/forget`` and retention purge files.

A JSONL record (``train.jsonl``, ``eval.jsonl``, exports) is ``{"messages": [...], "meta": {...}}``;
a preference row (``prefs.jsonl``) has ``meta`` beside its ``prompt``/``completion``/``chosen``/
``rejected``. ``meta`` holds store ids only, never text:

* ``users``: the conversation owner's user id;
* ``messages``: every message rendered into the record (history, question, answer);
* ``corrections``: the correction it trains on (whoever wrote it);
* ``sources``: the names of the knowledge documents in its context.

Trainers read only their own fields (``training.job.read_conversations`` takes ``messages``;
``training.pref_trainer`` drops ``meta`` before trl sees the rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordIds:
    """The store ids behind one example (see the module docstring)."""

    users: tuple[int, ...]
    messages: tuple[int, ...]
    corrections: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()

    def meta(self) -> dict[str, list[Any]]:
        return {"users": list(self.users), "messages": list(self.messages),
                "corrections": list(self.corrections), "sources": list(self.sources)}
