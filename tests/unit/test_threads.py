"""bot.threads.in_short_thread: runs elsewhere, returns or raises, leaves no thread behind."""

from __future__ import annotations

import threading

import pytest

from bot.threads import in_short_thread


def test_runs_in_another_thread_that_is_gone_afterwards() -> None:
    before = set(threading.enumerate())
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert in_short_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()
    assert set(threading.enumerate()) == before


def test_exceptions_reach_the_caller() -> None:
    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        in_short_thread(boom)
