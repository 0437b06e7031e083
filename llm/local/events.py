"""What crosses between the worker thread and a caller: its request and the typed events it gets.

A caller's ``stream`` puts a :class:`Request` into the worker's queue and then reads events from
the request's ``asyncio.Queue``, in this order: one :class:`Started`, any number of
:class:`Delta`, then exactly one :class:`Finished` or :class:`Failed` (the last event). The worker
never touches the caller's queue directly: events go through ``loop.call_soon_threadsafe``, and
the :class:`Outbox` gathers a step's events so that each event loop is woken ONCE per step, not
once per row and token (fewer wake-ups of the event loop competing with the worker).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llm.base import ChatMessage, GenParams


@dataclass(frozen=True)
class Started:
    """The request was admitted: the adapter that answers it (None = base) and its prompt size."""

    adapter: str | None
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    """More text of the answer; ``tokens`` = completion tokens generated so far."""

    text: str
    tokens: int


@dataclass(frozen=True)
class Finished:
    """The answer is complete: ``reason`` is "stop" (EOS or a stop string) or "length"."""

    reason: str
    tokens: int


@dataclass(frozen=True)
class Failed:
    """The request failed; ``stream`` raises ``error`` in the caller."""

    error: BaseException


Event = Started | Delta | Finished | Failed


@dataclass(eq=False)
class Request:
    """One caller's request: what to answer, how, and where its events go."""

    messages: list[ChatMessage]
    params: GenParams
    selector: str  # adapter selector: ACTIVE, BASE or a loaded version
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Event]
    outbox: Outbox
    cancelled: bool = False  # set by the caller (or when its loop is gone); the worker drops it
    finished: bool = False  # the caller has seen the last event

    def send(self, event: Event) -> None:
        """Worker thread: queue ``event`` for delivery at the end of the step."""
        self.outbox.put(self, event)

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to the caller's loop now (used when the worker stops)."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, event)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class Outbox:
    """The worker's events of one step, delivered with one ``call_soon_threadsafe`` per loop."""

    items: list[tuple[Request, Event]] = field(default_factory=list)

    def put(self, req: Request, event: Event) -> None:
        self.items.append((req, event))

    def flush(self) -> None:
        if not self.items:
            return
        items, self.items = self.items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, Event]]] = {}
        for item in items:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # the callers' loop is closed: nobody is listening any more
                for req, _ in batch:
                    req.cancelled = True


def _deliver_all(batch: list[tuple[Request, Event]]) -> None:
    for req, event in batch:
        req.out.put_nowait(event)
