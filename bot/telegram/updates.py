"""How updates reach the handlers: acknowledged to Telegram only once their message is stored.

PTB's updater confirms a batch of updates (the ``offset`` of its next getUpdates) right after it
has put the batch into the application's queue. ``AckQueue.put`` makes that wait until the update
is accepted: the core stored the user's message (it calls ``Renderer.start`` right after the
commit), or the update's handler returned. ``AckingProcessor`` runs updates concurrently and marks
each one handled when its handler finishes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

log = logging.getLogger("nightowl.telegram")


class AckQueue(asyncio.Queue[object]):
    """The update queue shared by PTB's updater and application; ``put`` waits for storage."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.done_max: int | None = None
        self._waiting: dict[int, asyncio.Event] = {}

    async def put(self, item: object) -> None:
        if not isinstance(item, Update) or self.timeout_s <= 0:
            await super().put(item)
            return
        event = self._waiting.setdefault(item.update_id, asyncio.Event())
        try:
            await super().put(item)
            await asyncio.wait_for(event.wait(), self.timeout_s)
        except TimeoutError:
            log.warning("update %s not stored after %s s; polling continues (it is still being "
                        "handled)", item.update_id, self.timeout_s)
        finally:
            self._waiting.pop(item.update_id, None)

    def accept(self, update_id: int) -> None:
        """The update's message is stored (or needs no storing): Telegram may forget it."""
        event = self._waiting.get(update_id)
        if event is not None:
            event.set()

    def done(self, update_id: int) -> None:
        self.accept(update_id)
        self.done_max = max(self.done_max or 0, update_id)


class AckingProcessor(BaseUpdateProcessor):
    """Concurrent update processing that marks each update handled when its handler returns."""

    def __init__(self, queue: AckQueue, max_concurrent: int = 64) -> None:
        super().__init__(max_concurrent)
        self.queue = queue

    async def do_process_update(self, update: object, coroutine: Any) -> None:
        try:
            await coroutine
        finally:
            if isinstance(update, Update):
                self.queue.done(update.update_id)

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

