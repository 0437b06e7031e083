"""The worker: ONE thread that loads the model and then runs every torch op of it, step by step.

Invariants:
* One thread runs every torch op of the model. It loads the model itself: OpenMP keeps a thread
  pool per calling thread, and a second pool (a loading thread's) slows every decode step on a
  small CPU. Work for the model from outside (an adapter swap, a tool's ``generate``) is a
  *command*, run on this thread between two steps.
* The event loop never runs model code. Callers and the worker meet in the
  :class:`RequestQueue` (a bounded FIFO, commands, the stop flag, under one lock); events go back
  through :mod:`llm.local.events`, flushed once per step.
* Requests join the running batch only between steps. A step (:meth:`EngineCore.step`, read it
  like vLLM's ``EngineCore.step``): schedule the waiting requests that fit (at most
  ``PREFILL_ROWS`` at once), prefill them together and emit their first tokens; then ONE decode
  forward pass for every running row, emit a token each, and let the finished rows leave. Each
  row samples with its own settings (:mod:`llm.local.sampling`) and checks its own stop
  strings, EOS and ``max_new_tokens``.
* A cancelled request leaves the queue at once, or the batch before the next decode step.
* A failed request fails alone; a failed step fails the requests of the batch, never the service.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.config import ModelConfig
from llm.errors import BusyError, ModelError
from llm.local.batch import Batch, Row
from llm.local.events import Failed, Finished, Outbox, Request
from llm.local.loading import Loaded, load_model
from llm.local.lora import AdapterSet
from llm.local.prefill import Prefill, Prepared
from llm.local.sampling import sample_batch

log = logging.getLogger("nightowl.llm")

PREFILL_ROWS = 8  # requests prefilled in one forward pass (more: later ones wait for the rest)
WINDOW_S = 10.0  # tokens/s is measured over this many seconds


class RequestQueue:
    """Where callers and the worker meet: waiting requests, commands, the stop flag."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.lock = threading.Condition()
        self.waiting: collections.deque[Request] = collections.deque()
        self.commands: list[Callable[[], None]] = []
        self.stopping = False

    def submit(self, req: Request) -> int:
        """Queue ``req``; return how many wait ahead of it. BusyError when the line is full."""
        with self.lock:
            ahead = len(self.waiting)
            if ahead >= self.max_queue:
                raise BusyError(f"I'm busy right now: you would be number {ahead + 1} in line "
                                f"and the line holds {self.max_queue}. Please try again in "
                                "a minute.", position=ahead + 1)
            self.waiting.append(req)
            self.lock.notify()
        return ahead

    def cancel(self, req: Request) -> None:
        with self.lock:
            req.cancelled = True
            try:
                self.waiting.remove(req)
            except ValueError:
                pass  # running: the worker drops it before its next step
            self.lock.notify()

    def command(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.commands.append(fn)
            self.lock.notify()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()

    def wait(self, busy: bool) -> list[Callable[[], None]] | None:
        """Worker: block until there is work (``busy``: running rows); return the commands to
        run before the next step, or None once the service stops."""
        with self.lock:
            while not (self.waiting or busy or self.commands or self.stopping):
                self.lock.wait()
            if self.stopping:
                return None
            commands, self.commands = self.commands, []
        return commands

    def drain(self) -> tuple[list[Request], list[Callable[[], None]]]:
        """Worker, stopping: take every waiting request and command."""
        with self.lock:
            waiting, commands = list(self.waiting), self.commands
            self.waiting.clear()
            self.commands = []
        return waiting, commands

    def next_request(self) -> Request | None:
        with self.lock:
            while self.waiting:
                req = self.waiting.popleft()
                if not req.cancelled:
                    return req
        return None


class Meter:
    """Tokens generated over the last ``WINDOW_S`` seconds, and requests served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self.served = 0

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._window.append((now, n))
            self._trim(now)

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            toks = sum(n for _, n in self._window)
            span = now - self._window[0][0] if self._window else 0.0
        return round(toks / span, 1) if span > 0.5 else 0.0

    def _trim(self, now: float) -> None:
        while self._window and now - self._window[0][0] > WINDOW_S:
            self._window.popleft()


class EngineCore:
    """The model's state on the worker thread: adapters, running batch, prefill."""

    def __init__(self, cfg: ModelConfig, loaded: Loaded, queue: RequestQueue,
                 meter: Meter) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.queue = queue
        self.meter = meter
        self.outbox = Outbox()
        self.batch = Batch(loaded.torch, loaded.device)
        self.adapters = AdapterSet(loaded, cfg.canary_share, self.batch.names)
        self.prefill = Prefill(loaded, self.adapters)

    def run(self) -> None:
        """The worker's loop: commands, then a step, until the queue says stop."""
        with self.loaded.torch.inference_mode():
            while (commands := self.queue.wait(busy=bool(self.batch.rows))) is not None:
                for cmd in commands:
                    cmd()
                try:
                    self.step()
                except Exception as exc:  # a broken step fails the batch, not the service
                    log.exception("decode step failed")
                    for row in self.batch.rows:
                        row.req.send(Failed(ModelError(f"generation failed: {exc}")))
                    self.batch.clear()
                self.outbox.flush()
        self._close()

    def step(self) -> None:
        """Schedule → run → emit: the requests that fit join (prefill, first tokens out), then
        one decode pass gives every running row its next token."""
        admitted = self._schedule()
        if admitted:
            self._prefill(admitted)
        self.outbox.flush()  # first tokens out before the next decode step
        self._drop([r for r in self.batch.rows if r.req.cancelled])
        if self.batch.rows:
            self._decode()

    def _schedule(self) -> list[Prepared]:
        """The waiting requests that fit into the batch, tokenized (all of them prefilled
        together, so prompts arriving together get their first tokens together)."""
        free = self.cfg.max_batch_size - len(self.batch.rows)
        if free <= 0:
            return []
        if not self.batch.rows:  # idle: let requests sent in the same instant join this prefill
            time.sleep(0.002)
        admitted: list[Prepared] = []
        while len(admitted) < min(free, PREFILL_ROWS):
            req = self.queue.next_request()
            if req is None:
                break
            try:
                prepared = self.prefill.prepare(req)
            except Exception as exc:
                log.exception("prefill failed")
                req.send(Failed(_model_error(exc)))
                continue
            if prepared is not None:
                admitted.append(prepared)
        return admitted

    def _prefill(self, admitted: list[Prepared]) -> None:
        try:
            out = self.prefill.run(admitted, self.adapters.forward)
            for row in self._emit(out.rows, out.logits):
                row.req.send(Finished(row.done, row.generated))
            self.batch.join(out.rows, out.cache, out.mask)
        except Exception as exc:
            log.exception("prefill failed")
            for prepared in admitted:
                prepared.row.req.send(Failed(_model_error(exc)))

    def _decode(self) -> None:
        finished = self._emit(self.batch.rows, self.batch.decode(self.adapters.forward))
        self._drop(finished)
        for row in finished:  # after the drop, so stats() never shows a finished request
            row.req.send(Finished(row.done, row.generated))

    def _emit(self, rows: list[Row], logits: Any) -> list[Row]:
        """Sample one token per row (each with its own settings) and stream its text; return
        the rows that finished."""
        ps = [r.req.params for r in rows]
        toks = sample_batch(logits, [r.seen for r in rows],
                            temperature=[p.temperature for p in ps], top_p=[p.top_p for p in ps],
                            repetition_penalty=[p.repetition_penalty for p in ps],
                            generators=[r.generator for r in rows])
        self.meter.tokens(len(rows))
        for row, tok in zip(rows, toks, strict=True):
            row.take(tok, self.loaded.eos, self.loaded.torch)
        return [r for r in rows if r.done]

    def _drop(self, rows: list[Row]) -> None:
        if not rows:
            return
        self.batch.drop(rows)
        self.meter.served += len(rows)
        self.adapters.unload_unused()

    def _close(self) -> None:
        """Fail what is still waiting or running; run the commands that came too late."""
        self.outbox.flush()
        err = ModelError("the model service was closed")
        waiting, commands = self.queue.drain()
        pending = [*waiting, *(r.req for r in self.batch.rows)]
        for req in pending:
            req.deliver(Failed(err))
        for cmd in commands:
            cmd()


def _model_error(exc: Exception) -> ModelError:
    return exc if isinstance(exc, ModelError) else ModelError(f"generation failed: {exc}")


def start(cfg: ModelConfig, storage_dir: Path, say: Callable[[str], None], queue: RequestQueue,
          meter: Meter) -> tuple[threading.Thread, EngineCore]:
    """Start the worker thread; it loads the model, then runs the loop. Blocks until the model
    is loaded; raises what loading raised (the thread has ended then)."""
    ready = threading.Event()
    box: list[EngineCore] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            box.append(EngineCore(cfg, load_model(cfg, storage_dir, say), queue, meter))
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            ready.set()
        box[0].run()

    thread = threading.Thread(target=main, name="nightowl-model", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    return thread, box[0]
