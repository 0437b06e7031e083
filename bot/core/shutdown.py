"""Stopping in bounded time: answers in flight get a grace period, then stop and stay pending.

Invariants:
* after :meth:`Halt.begin` no new generation starts: :meth:`Halt.run` raises :class:`Halted`
  at once, and the caller leaves the question ``pending`` (answered after the restart by the
  platform's recovery);
* :meth:`Halt.drain` returns within about ``grace_s`` + ``settle_s`` whatever the model does:
  generations still running after the grace period are cancelled (their ``Halted`` tells the
  caller to leave the question pending and say so), never awaited to the end;
* a generation is its own task, so cancelling it never cancels the platform task that awaits
  it (a Telegram recovery or a Discord event keeps running its own cleanup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("nightowl.core")

T = TypeVar("T")

RESTART_NOTICE = ("⏸ NightOwl is restarting; I kept your message and will answer it as soon as "
                  "I'm back.")


class Halted(Exception):
    """The process is stopping: the generation did not run (or was stopped) — keep the question
    pending."""


class Halt:
    """The stop state every answer checks; one per :class:`bot.core.Core`."""

    def __init__(self) -> None:
        self.stopping = False
        self._halted = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run one generation as its own task; raise :class:`Halted` if stopping overtakes it."""
        if self.stopping:
            work.close()
            raise Halted
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        halted = asyncio.create_task(self._halted.wait())
        try:
            await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
            if not task.done():  # halted, or our own caller was cancelled
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            raise Halted
        return task.result()

    def begin(self) -> None:
        """No new generation starts from now on."""
        self.stopping = True

    async def drain(self, grace_s: float, settle_s: float = 3.0) -> int:
        """Let running generations finish for ``grace_s``, then stop the rest; how many were
        stopped."""
        self.begin()
        running = set(self._running)
        if running:
            log.info("waiting up to %.0f s for %d answer(s) in progress", grace_s, len(running))
            await asyncio.wait(running, timeout=grace_s)
        left = {t for t in self._running if not t.done()}
        self._halted.set()
        if left:
            log.warning("stopping %d answer(s) still in progress; their questions stay pending "
                        "and are answered after the restart", len(left))
            await asyncio.wait(left, timeout=settle_s)
        return len(left)
