"""How updates reach the handlers: polled by our own loop, confirmed only once settled.

Telegram forgets every update below the ``offset`` of the next getUpdates, so the offset is a
single watermark. :class:`Poller` (used instead of PTB's Updater, which confirms a batch right
after queueing it and so has to block on each update) hands every new update to the
application at once and asks for the offset of :class:`Ledger`: one above the highest update
id received, or the oldest update not yet *settled*, whichever is lower. Invariants:

* An update is settled when its message is stored (the core calls ``Renderer.start`` right
  after the commit), when it needs no storing (a refusal, a command, a press: its handler
  finished), or when it had to be given up. Nothing above the offset is ever lost.
* A handler that fails before its message is stored leaves the update unsettled: the next
  getUpdates returns it again and it is handled again (at most ``MAX_ATTEMPTS`` times, then
  it is settled and the user gets the error reply).
* Unsettled updates never delay others: later updates are received and handled (updates
  already known are skipped). While some are unsettled Telegram answers getUpdates at once,
  so the poller re-polls every ``RECHECK_S`` or as soon as something settles.
* Telegram returns at most ``WINDOW`` updates per call. Only when a full window comes back
  with nothing new (everything behind the oldest unsettled update is invisible) is that update
  settled anyway, once it has waited ``[telegram] ack_timeout_s`` (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from telegram import Bot, Update
from telegram.error import InvalidToken, RetryAfter, TelegramError, TimedOut
from telegram.ext import BaseUpdateProcessor

log = logging.getLogger("nightowl.telegram")

WINDOW = 100  # Telegram's largest getUpdates batch
RECHECK_S = 0.25  # re-poll interval while some update is unsettled (adds at most this)
MAX_ATTEMPTS = 3  # handlings of an update whose message could not be stored
RETRY_AFTER_S = 1.0  # times the attempt number, before a failed update is handled again


class State(Enum):
    OPEN = "open"  # handed to the application
    STORING = "storing"  # its message is on its way into the store
    RETRY = "retry"  # storing failed: handle it again when Telegram returns it
    SETTLED = "settled"  # Telegram may forget it


@dataclass
class Entry:
    received: float
    state: State = State.OPEN
    attempts: int = 1
    retry_at: float = 0.0


class Ledger:
    """Which received updates Telegram may forget, and so the offset of the next getUpdates."""

    def __init__(self, ack_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock
        self._entries: dict[int, Entry] = {}
        self._floor = 0  # every update below this is settled and forgotten
        self._next = 0  # one above the highest update id received
        self.changed = asyncio.Event()

    @property
    def offset(self) -> int:
        """Everything below is settled; 0 before the first update."""
        open_ids = [i for i, e in self._entries.items() if e.state is not State.SETTLED]
        offset = min(open_ids) if open_ids else self._next
        for i in [i for i in self._entries if i < offset]:
            del self._entries[i]
        self._floor = max(self._floor, offset)
        return offset

    def holding(self) -> bool:
        """Some received update is not settled yet."""
        return any(e.state is not State.SETTLED for e in self._entries.values())

    def receive(self, updates: Sequence[Update]) -> list[Update]:
        """The updates of one getUpdates answer that are to be handled (new or to retry)."""
        now = self.clock()
        fresh: list[Update] = []
        for update in updates:
            uid = update.update_id
            self._next = max(self._next, uid + 1)
            if uid < self._floor:
                continue
            entry = self._entries.get(uid)
            if entry is None:
                self._entries[uid] = Entry(now)
                fresh.append(update)
            elif entry.state is State.RETRY and now >= entry.retry_at:
                entry.state, entry.attempts = State.OPEN, entry.attempts + 1
                log.info("handling update %s again (attempt %s)", uid, entry.attempts)
                fresh.append(update)
        return fresh

    def give_up_oldest(self) -> None:
        """A full window came back with nothing new: settle the oldest update if it is overdue."""
        pending = [(i, e) for i, e in self._entries.items() if e.state is not State.SETTLED]
        if not pending:
            return
        uid, entry = min(pending, key=lambda p: p[0])
        if self.clock() - entry.received >= self.ack_timeout_s:
            log.warning("update %s not stored after %s s while %s later updates wait behind it; "
                        "confirming it to Telegram anyway (it is still being handled)", uid,
                        self.ack_timeout_s, WINDOW)
            self._settle(uid)

    def _settle(self, uid: int) -> None:
        entry = self._entries.get(uid)
        if entry is not None and entry.state is not State.SETTLED:
            entry.state = State.SETTLED
            self.changed.set()

    def storing(self, uid: int) -> None:
        """The update's handler is about to store a message: a failure now means a retry."""
        entry = self._entries.get(uid)
        if entry is not None and entry.state is State.OPEN:
            entry.state = State.STORING

    def accept(self, uid: int) -> None:
        """The update's message is stored (or needs no storing): Telegram may forget it."""
        self._settle(uid)

    def done(self, uid: int) -> None:
        """The update's handler finished; unless it is to be retried, it is settled."""
        entry = self._entries.get(uid)
        if entry is not None and entry.state in (State.OPEN, State.STORING):
            self._settle(uid)

    def fail(self, uid: int) -> bool:
        """Handling failed. True when the update will be handled again (its message was not
        stored and attempts remain); False when it is settled as it is."""
        entry = self._entries.get(uid)
        if entry is None or entry.state is not State.STORING:
            return False
        if entry.attempts >= MAX_ATTEMPTS:
            self._settle(uid)
            return False
        entry.state = State.RETRY
        entry.retry_at = self.clock() + RETRY_AFTER_S * entry.attempts
        self.changed.set()
        return True


class Poller:
    """Long-polls getUpdates and feeds the application's queue; never waits on a handler."""

    def __init__(self, bot: Bot, ledger: Ledger, queue: asyncio.Queue[object], *,
                 timeout_s: float, allowed_updates: list[str],
                 on_error: Callable[[TelegramError], None]) -> None:
        self.bot, self.ledger, self.queue = bot, ledger, queue
        self.timeout_s = timeout_s
        self.allowed_updates = allowed_updates
        self.on_error = on_error
        self.confirmed = 0  # the offset Telegram last saw
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bot.delete_webhook()
        self._task = asyncio.create_task(self._run(), name="nightowl-telegram-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def confirm(self) -> None:
        """Tell Telegram what is settled now (at shutdown, after the handlers finished)."""
        offset = self.ledger.offset
        if offset > self.confirmed:
            try:
                await self.bot.get_updates(offset=offset, timeout=0,
                                           allowed_updates=self.allowed_updates)
                self.confirmed = offset
            except TelegramError as exc:
                log.warning("could not confirm the last updates (they may come again): %s", exc)

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            self.ledger.changed.clear()
            offset = self.ledger.offset
            try:
                updates = await self.bot.get_updates(
                    offset=offset or None, limit=WINDOW, timeout=int(self.timeout_s),
                    allowed_updates=self.allowed_updates)
            except InvalidToken as exc:
                log.error("Telegram rejected the bot token while polling (%s); polling stopped. "
                          "Copy the token from @BotFather again and restart.", exc)
                return
            except RetryAfter as exc:
                ra = exc.retry_after
                wait = ra.total_seconds() if isinstance(ra, dt.timedelta) else float(ra)
                log.info("flood control on getUpdates: waiting %s s", wait)
                await asyncio.sleep(wait + 0.5)
                continue
            except TimedOut:
                continue
            except TelegramError as exc:
                self.on_error(exc)
                backoff = min(30.0, backoff * 1.5 or 1.0)
                await asyncio.sleep(backoff)
                continue
            except Exception:  # a bug or an unreadable answer: keep polling, loudly
                log.exception("polling Telegram failed unexpectedly (will retry)")
                backoff = min(30.0, backoff * 1.5 or 1.0)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            self.confirmed = max(self.confirmed, offset)
            fresh = self.ledger.receive(updates)
            for update in fresh:
                self.queue.put_nowait(update)
            if fresh or not self.ledger.holding():
                continue
            if len(updates) >= WINDOW:
                self.ledger.give_up_oldest()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ledger.changed.wait(), RECHECK_S)


class AckingProcessor(BaseUpdateProcessor):
    """Concurrent update processing that marks each update handled when its handler returns."""

    def __init__(self, ledger: Ledger, max_concurrent: int = 64) -> None:
        super().__init__(max_concurrent)
        self.ledger = ledger

    async def do_process_update(self, update: object, coroutine: Any) -> None:
        try:
            await coroutine
        finally:
            if isinstance(update, Update):
                self.ledger.done(update.update_id)

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None
