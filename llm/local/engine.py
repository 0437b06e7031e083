"""LocalChatModel: the asyncio face of the local engine (transformers + peft in this process).

This module runs on the caller's event loop and never runs model code: it checks and queues
requests, turns the worker's events (:mod:`llm.local.events`) into text deltas and
``StreamInfo``, and hands adapter work to the worker thread as commands that run between two
steps (:mod:`llm.local.worker`). Semantics:

* ``stream`` waits in a bounded FIFO queue (``[model] max_queue``; full: BusyError) and joins the
  running batch (at most ``[model] max_batch_size`` rows) between decode steps. Cancelling the
  consumer removes the request from the queue at once, or from the batch before the next step.
* ``set_adapter(path, version)`` loads the adapter between two decode steps and makes it the
  active one, without reloading the base model or dropping a request: every request is pinned to
  the adapter chosen when it was admitted, so requests started on the old adapter finish on it
  while new ones use the new one (see :mod:`llm.local.lora`). A missing/corrupt folder raises
  AdapterError and the previous adapter stays active.
* ``load_adapter(path, version)`` loads an extra adapter without activating it; requests can ask
  for it (``stream(..., adapter=version)``), and it becomes the canary (:mod:`llm.canary`);
  ``set_canary_share`` changes its share between two steps (requests already admitted keep the
  adapter they were pinned to).
* A loaded label is never re-pointed: ``set_adapter``/``load_adapter`` with a loaded version and
  another folder raise AdapterError and change nothing.
* ``StreamInfo.adapter`` is the version that actually answered (None = base model).
* Greedy output in float32 is identical alone and in a batch (and equal to transformers'
  ``generate``); in bf16 a batched matmul may round differently and flip a near-tie.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llm.adapters import validate_adapter_dir
from llm.base import ACTIVE, BASE, CanaryState, ChatMessage, GenParams, StreamInfo
from llm.canary import check_share
from llm.config import ModelConfig
from llm.errors import AdapterError, ModelError
from llm.local.events import Delta, Event, Failed, Finished, Request, Started
from llm.local.loading import Loaded, render
from llm.local.worker import EngineCore, Meter, RequestQueue, start

log = logging.getLogger("nightowl.llm")

T = TypeVar("T")


class LocalChatModel:
    """ChatModel on transformers + peft. Build it with ``await LocalChatModel.open(...)``."""

    def __init__(self, cfg: ModelConfig, storage_dir: Path,
                 say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.storage_dir = Path(storage_dir)
        self.say = say or log.info
        self.name = cfg.name
        self.context_length = cfg.context_length
        self._queue = RequestQueue(cfg.max_queue)
        self._meter = Meter()
        self._thread: threading.Thread | None = None  # the worker thread once loaded
        self._core: EngineCore | None = None
        self._count_tok: Any = None  # the event loop's tokenizer

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    async def open(cls, cfg: ModelConfig, storage_dir: Path,
                   say: Callable[[str], None] | None = None) -> LocalChatModel:
        """Load the model in a thread and start the worker."""
        self = cls(cfg, storage_dir, say)
        await asyncio.to_thread(self.load)
        return self

    def load(self) -> None:
        """Blocking load (model + tokenizers, on the worker thread) and worker start; ``open``
        runs it in a thread."""
        self._thread, self._core = start(self.cfg, self.storage_dir, self.say, self._queue,
                                         self._meter)
        loaded = self._core.loaded
        self.context_length = loaded.context_length
        self._count_tok = loaded.count_tokenizer
        self.say(f"Model {self.cfg.name} ready ({loaded.device}, "
                 f"{str(loaded.dtype).removeprefix('torch.')}, {loaded.threads} threads, "
                 f"context {self.context_length}).")

    # ---- ChatModel API -----------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._core.adapters.active if self._core is not None else None

    @property
    def packs_prompts(self) -> bool:
        """Whether prefill packs prompts into one pass (False once the model showed that its
        attention does not take the packing arguments: each prompt is then prefilled alone)."""
        return self._core is not None and self._core.prefill.packs

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self._count_tok is None:
            raise ModelError("the model is not loaded yet; use `await LocalChatModel.open(...)`")
        return len(render(self._count_tok, messages))

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        core = self._running()
        if adapter not in (ACTIVE, BASE) and not core.adapters.has(adapter):
            raise AdapterError(f"adapter {adapter!r} is not loaded; load it with "
                               "load_adapter() first (loaded: "
                               f"{', '.join(core.adapters.versions()) or 'none'})")
        req = Request(list(messages), params or self.cfg.gen_params(), adapter,
                      asyncio.get_running_loop(), asyncio.Queue(), core.outbox)
        ahead = self._queue.submit(req)
        if info is not None:
            info.queue_position = ahead + (len(core.batch.rows) >= self.cfg.max_batch_size)
        try:
            while True:
                event: Event = await req.out.get()
                if isinstance(event, Delta):
                    if info is not None:
                        info.completion_tokens = event.tokens
                    if event.text:
                        yield event.text
                elif isinstance(event, Started):
                    if info is not None:
                        info.adapter, info.prompt_tokens = event.adapter, event.prompt_tokens
                elif isinstance(event, Finished):
                    if info is not None:
                        info.finish_reason, info.completion_tokens = event.reason, event.tokens
                    req.finished = True
                    return
                elif isinstance(event, Failed):
                    req.finished = True
                    raise event.error
        finally:
            if not req.finished:
                self._queue.cancel(req)

    def stats(self) -> dict[str, Any]:
        core = self._core
        canary = core.adapters.canary if core is not None else None
        with self._queue.lock:
            queued = len(self._queue.waiting)
        return {"backend": "local", "queue": queued,
                "running": len(core.batch.rows) if core is not None else 0,
                "tokens_per_s": self._meter.tokens_per_s(),
                "adapter": self.active_adapter, "canary": canary,
                "canary_share": self.canary.share,
                "loaded_adapters": sorted(core.adapters.versions()) if core is not None else [],
                "served": self._meter.served}

    async def aclose(self) -> None:
        self._queue.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)

    # ---- adapters ----------------------------------------------------------------------------
    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        if path is None:
            core = self._running()
            await self._call(lambda: core.adapters.activate(None))
            return
        label = version or Path(path).name
        checked = validate_adapter_dir(Path(path))
        core = self._running()
        await self._call(lambda: core.adapters.activate(core.adapters.load(checked, label)))

    async def load_adapter(self, path: Path, version: str) -> None:
        checked = validate_adapter_dir(Path(path))
        core = self._running()
        await self._call(lambda: core.adapters.load_extra(checked, version))

    @property
    def canary(self) -> CanaryState:
        core = self._core
        if core is None:
            return CanaryState(None, self.cfg.canary_share)
        rule = core.adapters.canary_rule
        return CanaryState(rule.version, rule.share)

    async def set_canary_share(self, share: float) -> None:
        value = check_share(share)  # refused here, before anything is queued
        core = self._running()
        await self._call(lambda: core.adapters.canary_rule.set_share(value))

    # ---- the worker thread -------------------------------------------------------------------
    async def run_on_worker(self, fn: Callable[[Loaded], T]) -> T:
        """Run ``fn(loaded)`` on the model's thread between two steps and return its result
        (tools and tests: a reference ``generate``, building an adapter), so that torch work
        stays on the one thread that runs the model."""
        core = self._running()
        return await self._call(lambda: fn(core.loaded))

    def _running(self) -> EngineCore:
        if self._thread is None or self._core is None or self._queue.stopping:
            raise ModelError("the model service is not running (closed or not loaded)")
        return self._core

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread between two decode steps; return its result."""
        self._running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                res = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, res, None)

        self._queue.command(run)
        return await fut


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
