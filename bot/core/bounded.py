"""Bounded per-key state: what the bot remembers per chat or user never grows without limit.

:class:`LruDict` keeps at most ``limit`` entries and drops the least recently used one that may
go (``evictable``); an entry still in use stays, so the dict can exceed the limit only while more
than ``limit`` entries are in use at once. :class:`KeyedLocks` is one ``asyncio.Lock`` per key
built on it: a lock is dropped only when no task holds it or waits for it, so two tasks never hold
different locks for the same key.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruDict(Generic[K, V]):
    """A mapping of at most ``limit`` entries; reading or writing an entry marks it used."""

    def __init__(self, limit: int, evictable: Callable[[V], bool] = lambda value: True) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.evictable = evictable
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value``; it is never the one dropped to make room (the caller is using it)."""
        self._data[key] = value
        self._data.move_to_end(key)
        self.trim(keep=key)

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = factory()
            self.put(key, value)
        return value

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def trim(self, keep: K | None = None) -> None:
        """Drop least recently used evictable entries (never ``keep``) until at most ``limit``
        remain."""
        excess = len(self._data) - self.limit
        victims: list[K] = []
        for key, value in self._data.items():  # oldest first; usually the first one goes
            if len(victims) >= excess:
                break
            if key != keep and self.evictable(value):
                victims.append(key)
        for key in victims:
            del self._data[key]


class _Held:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # tasks holding or waiting for the lock


class KeyedLocks(Generic[K]):
    """``async with locks.hold(key):`` serialises the tasks of one key."""

    def __init__(self, limit: int = 10_000) -> None:
        self._locks: LruDict[K, _Held] = LruDict(limit, evictable=lambda h: h.users == 0)

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        held = self._locks.get_or_create(key, _Held)  # not dropped: no await before users += 1
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            self._locks.trim()
