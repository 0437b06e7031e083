"""Where torch work runs: the chat model's worker thread, a short-lived thread, or a serial one.

OpenMP (torch's CPU thread pool) keeps a pool of threads for every long-lived thread that ran a
parallel region. With two live pools on a small machine, libgomp throttles its spin-waits, and
every parallel region of the chat model's worker then pays a thread wake-up (a single query
embedding in an asyncio executor thread is enough to slow decoding for good). So torch work
outside the model worker runs either

* in :func:`in_short_thread` (bulk work: ingest embeddings, a moderation classifier): the thread
  ends when the work returns and takes its pool with it; or
* on a :func:`torch_serial_executor` (small, latency-bound work: a query embedding, an exact
  vector search): one long-lived thread whose torch ops run on itself only, so it never starts a
  pool (and no query pays for starting a thread).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

T = TypeVar("T")


def in_short_thread(fn: Callable[[], T], name: str = "nightowl-torch") -> T:
    """Run ``fn`` in a new thread that ends when it returns; return its result or raise its
    exception in the caller's thread.

    The thread sets its torch thread count to every core first: a new thread otherwise takes
    the count last set by any thread (1, after a serial executor started).
    """
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            _threads(os.cpu_count() or 1)
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


def _threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)  # this thread's OpenMP team size


def _single_threaded() -> None:
    _threads(1)


def torch_serial_executor(name: str) -> ThreadPoolExecutor:
    """One thread that runs torch ops without an OpenMP pool, for small latency-bound work."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                              initializer=_single_threaded)
