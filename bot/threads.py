"""Where torch work runs: the chat model's worker thread, or a short-lived thread.

OpenMP (torch's CPU thread pool) keeps a pool of threads for every long-lived thread that ran a
parallel region. With two live pools on a small machine, libgomp throttles its spin-waits, and
every parallel region of the chat model's worker then pays a thread wake-up: measured on the
2-core CPU, decode fell from 29 to 18 tok/s after ONE query embedding in an asyncio executor
thread. So torch work outside the model worker (embeddings, exact vector search, a moderation
classifier) runs in :func:`in_short_thread`: the thread ends when the work returns, and takes its
pool with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def in_short_thread(fn: Callable[[], T], name: str = "nightowl-torch") -> T:
    """Run ``fn`` in a new thread that ends when it returns; return its result or raise its
    exception in the caller's thread."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller's thread
            box.append((False, exc))

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join()
    ok, value = box[0]
    if not ok:
        raise value
    return cast(T, value)
