"""Compare: one prompt answered by several adapters, with and without retrieval, streamed.

A column is (adapter, retrieval). The prompt is built as the core builds it (system prompt,
retrieved passages, the model's chat template budget) but without history and nothing is stored:
comparing never changes a conversation. Every column streams at once (the engine batches them);
:func:`stream_columns` yields typed events in arrival order. A candidate that is not loaded yet is
loaded with ``load_adapter``; with a canary share above 0 that would make it the canary, so it
is refused then. Blind A/B trials keep their answers server-side until the admin votes; a vote
appends a preference pair (chosen, rejected, and the prompt messages both answered) to
``<storage>/preferences/pairs.jsonl``, which training's preference stage reads
(``training.preferences.read_votes``: methods kto and sft+dpo).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.console.services import ConsoleCore, ConsoleSettings
from bot.core.bounded import LruDict
from llm.base import ACTIVE, BASE, ChatMessage, StreamInfo
from llm.prompt import build_messages, fit_messages_off_loop
from rag.base import format_context
from training.registry import Registry


@dataclass(frozen=True)
class Column:
    adapter: str  # "base" | "active" | a version
    retrieval: bool

    @property
    def label(self) -> str:
        return f"{self.adapter} · {'with' if self.retrieval else 'without'} retrieval"


@dataclass
class ColumnResult:
    column: Column
    text: str = ""
    adapter_used: str | None = None
    sources: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    error: str = ""
    messages: list[ChatMessage] = field(default_factory=list)  # the prompt it answered


@dataclass(frozen=True)
class Event:
    col: int
    delta: str = ""
    done: bool = False
    result: ColumnResult | None = None

    def json(self) -> str:
        out: dict[str, Any] = {"col": self.col}
        if self.delta:
            out["delta"] = self.delta
        if self.done and self.result is not None:
            r = self.result
            out.update(done=True, adapter=r.adapter_used or "base", sources=r.sources,
                       latency_s=round(r.latency_s, 2), error=r.error)
        return json.dumps(out, ensure_ascii=False)


class CompareError(Exception):
    """A column that cannot be answered (unknown adapter...); the message says why."""


def choices(cfg: ConsoleSettings) -> list[str]:
    """Adapters one may compare: base, active, and every version on disk (newest first)."""
    return [BASE, ACTIVE, *reversed(Registry(cfg.storage.path).versions())]


async def _prepare(core: ConsoleCore, cfg: ConsoleSettings, col: Column) -> str:
    if col.adapter in (BASE, ACTIVE) or col.adapter == core.model.active_adapter:
        return ACTIVE if col.adapter == core.model.active_adapter else col.adapter
    registry = Registry(cfg.storage.path)
    path = registry.validate(col.adapter)
    loaded = core.model.stats().get("loaded_adapters") or []
    if col.adapter not in loaded:
        share = core.model.canary.share
        if share > 0:
            raise CompareError(f"{col.adapter} is not loaded and loading it would make it the "
                               f"canary, which answers {share:.0%} of the chats; set the canary "
                               "share to 0 on the Training page to compare it")
        await core.model.load_adapter(path, col.adapter)
    return col.adapter


async def _answer(core: ConsoleCore, cfg: ConsoleSettings, prompt: str, col: Column, index: int,
                  out: asyncio.Queue[Event]) -> None:
    result = ColumnResult(col)
    started = time.monotonic()
    try:
        selector = await _prepare(core, cfg, col)
        passages = []
        if col.retrieval and core.knowledge is not None and cfg.rag.enabled:
            passages = await core.knowledge.search(prompt, cfg.rag.top_k)
        messages = build_messages(cfg.model.system_prompt,
                                  format_context(passages) if passages else None, [], prompt)
        budget = max(core.model.context_length - cfg.model.max_new_tokens, 64)
        fitted = await fit_messages_off_loop(messages, core.model.count_tokens, budget)
        info = StreamInfo()
        result.messages = list(fitted.messages)
        async for delta in core.model.stream(fitted.messages, cfg.model.gen_params(),
                                             adapter=selector, info=info):
            result.text += delta
            await out.put(Event(index, delta=delta))
        result.adapter_used = info.adapter
        result.sources = [p.label() for p in passages]
    except Exception as exc:  # one column failing must not stop the others
        result.error = str(exc) or type(exc).__name__
    result.latency_s = time.monotonic() - started
    await out.put(Event(index, done=True, result=result))


async def stream_columns(core: ConsoleCore, cfg: ConsoleSettings, prompt: str,
                         columns: list[Column]) -> AsyncIterator[Event]:
    """Every column's deltas as they arrive, then one ``done`` event per column."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    tasks = [asyncio.create_task(_answer(core, cfg, prompt, c, i, queue))
             for i, c in enumerate(columns)]
    try:
        remaining = len(columns)
        while remaining:
            event = await queue.get()
            remaining -= event.done
            yield event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def answer_all(core: ConsoleCore, cfg: ConsoleSettings, prompt: str,
                     columns: list[Column]) -> list[ColumnResult]:
    """The finished results (the page without JavaScript)."""
    results: list[ColumnResult | None] = [None] * len(columns)
    async for event in stream_columns(core, cfg, prompt, columns):
        if event.done:
            results[event.col] = event.result
    return [r for r in results if r is not None]


# ---- blind A/B --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    id: str
    prompt: str
    shown: tuple[ColumnResult, ColumnResult]  # A, B (shuffled)


class BlindTrials:
    """Trials waiting for a vote (bounded); a vote is stored once as a preference pair."""

    def __init__(self, storage: Path, rng: random.Random | None = None) -> None:
        self.path = Path(storage) / "preferences" / "pairs.jsonl"
        self._rng = rng or random.Random()
        self._open: LruDict[str, Trial] = LruDict(200)

    def create(self, prompt: str, a: ColumnResult, b: ColumnResult) -> Trial:
        pair = (a, b) if self._rng.random() < 0.5 else (b, a)
        trial = Trial(secrets.token_hex(8), prompt, pair)
        self._open.put(trial.id, trial)
        return trial

    def get(self, trial_id: str) -> Trial | None:
        return self._open.get(trial_id)

    def vote(self, trial_id: str, choice: str, by: str) -> dict[str, Any] | None:
        """``choice`` is "A" or "B"; returns the stored pair, None if the trial is unknown."""
        trial = self._open.pop(trial_id)
        if trial is None or choice not in ("A", "B"):
            return None
        chosen, rejected = trial.shown if choice == "A" else trial.shown[::-1]
        record = {"prompt": trial.prompt, "messages": chosen.messages or rejected.messages,
                  "chosen": chosen.text, "rejected": rejected.text,
                  "chosen_column": asdict(chosen.column), "rejected_column":
                  asdict(rejected.column), "chosen_adapter": chosen.adapter_used or "base",
                  "rejected_adapter": rejected.adapter_used or "base", "by": by,
                  "at": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:  # one line per vote, durable
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record
