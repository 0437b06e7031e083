"""The canary rule, shared by every backend: which adapter answers a request for ACTIVE.

The most recently loaded extra adapter (``load_adapter`` of a version that is not the active one)
is the canary. It answers ``[model] canary_share`` of the requests that ask for ACTIVE,
deterministically: a credit grows by the share on every such request and each time it reaches 1
the canary answers (share 0.25: every 4th request). No canary, or share 0: the active adapter
answers every request.
"""

from __future__ import annotations


class Canary:
    """The canary adapter of one backend and the credit that spreads its share."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.version: str | None = None  # None: no canary
        self._credit = 0.0

    def loaded(self, version: str, active: str | None) -> None:
        """``load_adapter(version)`` succeeded: it becomes the canary unless it is the active."""
        if version != active:
            self.version = version

    def pick(self, active: str | None) -> str | None:
        """The version that answers the next ACTIVE request (None = the base model)."""
        if self.version is None or self.share <= 0:
            return active
        self._credit += self.share
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return self.version
        return active
