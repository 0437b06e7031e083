"""Per-user and per-chat token buckets and a per-user concurrency cap.

``Core.handle`` does not apply them to admins or the terminal's operator (``Incoming.is_admin``).

The buckets are bounded (:class:`bot.core.bounded.LruDict`, least recently used dropped first): a
dropped bucket comes back full, which only forgets an idle sender's recent messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.bounded import LruDict
from bot.core.config import LimitsConfig

MAX_BUCKETS = 100_000


@dataclass
class Bucket:
    capacity: float
    rate_per_s: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0 if allowed, else seconds until one is available."""
        if self.rate_per_s <= 0:
            return 0.0
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """Token buckets keyed by user and by chat; ``clock`` is injectable for tests."""

    def __init__(self, cfg: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self._buckets: LruDict[tuple[str, str], Bucket] = LruDict(MAX_BUCKETS)
        self._active: dict[str, int] = {}

    def _bucket(self, key: tuple[str, str], per_minute: float, burst: float,
                now: float) -> Bucket:
        # a new bucket starts full *at now*: created later than ``now`` it would start in debt
        return self._buckets.get_or_create(key, lambda: Bucket(burst, per_minute / 60.0, burst,
                                                               now))

    def check(self, user_key: str, chat_key: str) -> str | None:
        """None if allowed, else a polite message saying when to try again."""
        now = self.clock()
        c = self.cfg
        if self._active.get(user_key, 0) >= c.max_concurrent_per_user:
            return "⏳ I'm still answering your previous messages; please wait for them."
        user = self._bucket(("user", user_key), c.user_messages_per_minute, c.user_burst, now)
        wait = user.take(now)
        if not wait:
            chat_burst = max(c.user_burst, c.chat_messages_per_minute / 6)
            wait = self._bucket(("chat", chat_key), c.chat_messages_per_minute,
                                chat_burst, now).take(now)
            if wait:  # give the user's token back: the chat limit refused this one
                user.tokens += 1.0
        if wait:
            return (f"⏳ You're sending messages faster than I can answer; please wait "
                    f"{max(1, round(wait))} s and try again.")
        return None

    def begin(self, user_key: str) -> None:
        self._active[user_key] = self._active.get(user_key, 0) + 1

    def end(self, user_key: str) -> None:
        n = self._active.get(user_key, 0) - 1
        if n <= 0:
            self._active.pop(user_key, None)
        else:
            self._active[user_key] = n
