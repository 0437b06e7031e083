"""Moderation: a guard applied before answering and before training data is accepted.

``check`` is synchronous (the training dataset builder calls it, through
``training.dataset.ContentGuard``); the core calls :meth:`Guards.screen`, which never blocks the
event loop: when a guard runs a model (the classifier), the check runs in a worker thread, and the
classifier hands its torch work to a short-lived thread (``llm.threads.in_short_thread``) so no
long-lived thread keeps an OpenMP pool. Loading the classifier blocks too: a running process
builds its guards with :func:`open_guard` (in a worker thread), :func:`build_guard` is for code
without an event loop.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Sequence
from typing import Protocol

from bot.core.config import ModerationConfig
from llm.threads import in_short_thread


class Guard(Protocol):
    runs_model: bool  # True: slow, kept off the event loop

    def check(self, text: str) -> str | None:
        """None if the text may pass, else the reason it is refused."""
        ...


def normalize(text: str) -> str:
    """NFKC, lower case, zero-width and control characters removed (defeats trivial evasion)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text
                   if unicodedata.category(ch) not in ("Cf", "Cc") or ch in "\n\t")
    return text.casefold()


class KeywordGuard:
    """Refuses text containing any configured word or phrase (whole words, case-insensitive)."""

    runs_model = False

    def __init__(self, words: Sequence[str]) -> None:
        self.words = [w for w in (normalize(w).strip() for w in words) if w]
        self._re = (re.compile(r"\b(" + "|".join(re.escape(w) for w in self.words) + r")\b")
                    if self.words else None)

    def check(self, text: str) -> str | None:
        if self._re is None:
            return None
        m = self._re.search(normalize(text))
        return f"contains a blocked term ({m.group(1)!r})" if m else None


class ClassifierGuard:
    """A transformers text-classification model; refuses when a flagged label scores high."""

    runs_model = True

    def __init__(self, model: str, labels: Sequence[str], threshold: float) -> None:
        from transformers import pipeline

        self.pipe = in_short_thread(lambda: pipeline("text-classification", model=model,
                                                     top_k=None))
        self.labels = {label.lower() for label in labels}
        self.threshold = threshold

    def check(self, text: str) -> str | None:
        scores = in_short_thread(lambda: self.pipe(text[:2000], truncation=True))
        flat = scores[0] if scores and isinstance(scores[0], list) else scores
        for s in flat:
            if s["label"].lower() in self.labels and s["score"] >= self.threshold:
                return f"flagged as {s['label']} ({s['score']:.2f})"
        return None


class Guards:
    """All configured guards; the first refusal wins."""

    def __init__(self, guards: Sequence[Guard]) -> None:
        self.guards = list(guards)
        self.runs_model = any(g.runs_model for g in self.guards)

    def check(self, text: str) -> str | None:
        for g in self.guards:
            reason = g.check(text)
            if reason:
                return reason
        return None

    async def screen(self, text: str) -> str | None:
        """:meth:`check` from the event loop, without blocking it when a guard runs a model."""
        if not self.runs_model:
            return self.check(text)
        return await asyncio.to_thread(self.check, text)


def build_guard(cfg: ModerationConfig) -> Guards:
    guards: list[Guard] = []
    if cfg.blocked_words:
        guards.append(KeywordGuard(cfg.blocked_words))
    if cfg.classifier_model:
        guards.append(ClassifierGuard(cfg.classifier_model, cfg.classifier_labels,
                                      cfg.classifier_threshold))
    return Guards(guards)


async def open_guard(cfg: ModerationConfig) -> Guards:
    """:func:`build_guard` from the event loop: a classifier loads in a worker thread."""
    if not cfg.classifier_model:
        return build_guard(cfg)
    return await asyncio.to_thread(build_guard, cfg)
