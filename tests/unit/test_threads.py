"""llm.threads.in_short_thread: runs elsewhere, returns or raises, leaves no thread behind."""

from __future__ import annotations

import threading

import pytest

from llm.threads import in_short_thread


def test_runs_in_another_thread_that_is_gone_afterwards() -> None:
    before = set(threading.enumerate())
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert in_short_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()
    assert set(threading.enumerate()) <= before  # (another test's thread may end meanwhile)


def test_exceptions_reach_the_caller() -> None:
    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        in_short_thread(boom)


def test_short_threads_use_every_core_and_serial_threads_one() -> None:
    import os

    torch = pytest.importorskip("torch")
    from llm.threads import torch_serial_executor

    serial = torch_serial_executor("test-serial")
    try:
        assert serial.submit(torch.get_num_threads).result() == 1
        # a new thread would otherwise start with the count the serial thread set last
        assert in_short_thread(torch.get_num_threads) == (os.cpu_count() or 1)
    finally:
        serial.shutdown()
