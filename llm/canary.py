"""The canary rule, shared by every backend: which adapter answers a request for ACTIVE.

The most recently loaded extra adapter (``load_adapter`` of a version that is not the active one)
is the canary. It answers ``[model] canary_share`` of the requests that ask for ACTIVE,
deterministically: a credit grows by the share on every such request and each time it reaches 1
the canary answers (share 0.25: every 4th request). No canary, or share 0: the active adapter
answers every request. ``set_share`` changes the share at run time (the console does, and keeps
it across restarts); a share outside 0..1 is refused with a ModelError that says so.
"""

from __future__ import annotations

import math

from llm.errors import ModelError


def check_share(share: float) -> float:
    """``share`` as a float if it is a number in 0..1, else a ModelError saying what is allowed."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ModelError(f"the canary share must be a number from 0 to 1 (0 = off, 0.25 = every "
                         f"4th request), not {share!r}")
    return value


class Canary:
    """The canary adapter of one backend and the credit that spreads its share."""

    def __init__(self, share: float) -> None:
        self.share = check_share(share)
        self.version: str | None = None  # None: no canary
        self._credit = 0.0

    def loaded(self, version: str, active: str | None) -> None:
        """``load_adapter(version)`` succeeded: it becomes the canary unless it is the active."""
        if version != active:
            self.version = version

    def set_share(self, share: float) -> None:
        """Answer ``share`` of the ACTIVE requests from now on (the credit starts again)."""
        self.share = check_share(share)
        self._credit = 0.0

    def pick(self, active: str | None) -> str | None:
        """The version that answers the next ACTIVE request (None = the base model)."""
        if self.version is None or self.share <= 0:
            return active
        self._credit += self.share
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return self.version
        return active
