"""OpenAIChatModel: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, NightOwl's own).

* Streaming chat completions through the ``openai`` client against ``[model] base_url`` (ending
  in ``/v1``) with model name ``[model] name``; the API key is read from the environment
  variable named by ``[model] api_key_env`` (many local servers need none).
* ``[model] timeout_s`` bounds connecting and each read. Connection errors, timeouts, 429 and
  5xx answers are retried with exponential backoff (tenacity, 3 attempts) only *before the first
  token*; once text has streamed, an error ends the answer with a ModelError. A dead vLLM engine
  (a 500, or a 200 whose stream carries an ``error`` event) is not retried: it is reported at
  once as a ModelError that says to restart vLLM (:mod:`llm.remote.replies` maps every known
  vLLM reply to a message that says what to change).
* ``seed`` is sent only with temperature 0. vLLM's CPU build kills its engine when a sampled
  (temperature > 0) request with a seed is prefilled in more than one step; a sampled answer
  is therefore not reproducible through this backend.
* Adapters: ``set_adapter``/``load_adapter`` load the folder at run time (``POST
  /v1/load_lora_adapter``; the path must be readable by the server: same host or shared storage;
  vLLM needs ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), under the name
  ``nightowl-vNNNN`` on vLLM (:mod:`llm.remote.adapters`), and requests select one by sending
  it as ``model``. Each request is pinned to the adapter chosen when it starts: a promotion
  makes new requests use the new name while requests in flight finish on the old one, which is
  unloaded once none uses it. Rollback loads the older name again if it was unloaded. A canary
  (``[model] canary_share``, changed at run time by ``set_canary_share``) answers that share of
  ACTIVE requests under its own name.
  ``StreamInfo.adapter`` is the NightOwl version that answered (None = base model).
* A server restart loses runtime adapters: after a connection failure or a dead engine, and on a
  404 for one of our names, the lost adapters are loaded again before the request goes out (a
  404 request is sent once more). Servers without the LoRA endpoint get a clear AdapterError;
  the previous adapter keeps serving.
* ``count_tokens`` is an APPROXIMATION (no tokenizer is available for a remote model): about four
  characters per token plus four tokens per message, rounded up. History fitting therefore keeps
  a safety margin of 10 %; set ``[model] context_length`` to the server's real window.
* ``repetition_penalty`` is sent as an extra body field (vLLM and NightOwl's server honour it,
  llama.cpp's server reads ``repeat_penalty``, which is sent too; others ignore them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from llm.base import ACTIVE, BASE, CanaryState, ChatMessage, GenParams, StreamInfo
from llm.canary import Canary
from llm.config import ModelConfig
from llm.errors import AdapterError, BusyError, ModelError
from llm.remote import replies
from llm.remote.adapters import RemoteAdapters

log = logging.getLogger("nightowl.llm")

RETRY_ATTEMPTS = 3


class _Missing(Exception):
    """The server answered 404 for one of our adapter names (it lost it: restart)."""


class OpenAIChatModel:
    """ChatModel backed by an OpenAI-compatible HTTP server."""

    def __init__(self, cfg: ModelConfig, api_key: str | None = None) -> None:
        from openai import AsyncOpenAI

        if not cfg.base_url:
            raise ModelError("[model] backend = 'openai' needs base_url, e.g. "
                             "'http://127.0.0.1:8000/v1'")
        self.cfg = cfg
        self.name = cfg.name
        self.context_length = cfg.context_length
        self.base_url = cfg.base_url.rstrip("/")
        key = api_key or (os.environ.get(cfg.api_key_env, "").strip() if cfg.api_key_env
                          else "")
        if cfg.api_key_env and not key:
            log.warning("environment variable %s (api_key_env) is empty", cfg.api_key_env)
        self._client = AsyncOpenAI(base_url=self.base_url, api_key=key or "not-needed",
                                   timeout=cfg.timeout_s, max_retries=0)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(timeout=cfg.timeout_s, headers=headers)
        self.adapters = RemoteAdapters(self.base_url, self.name, self._http)
        self._active: str | None = None
        self._canary = Canary(cfg.canary_share)
        self._inflight = 0
        self._served = 0
        self._tokens: list[tuple[float, int]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Approximate: ceil(chars / 4) + 4 per message + 2, plus a 10 % margin."""
        raw = sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages) + 2
        return math.ceil(raw * 1.1)

    def _resolve(self, adapter: str) -> str | None:
        if adapter == BASE:
            return None
        if adapter != ACTIVE:
            if not self.adapters.has(adapter):
                raise AdapterError(f"adapter {adapter!r} was not loaded on the server; "
                                   "call load_adapter() first")
            return adapter
        version = self._canary.pick(self._active)
        return version if version is None or self.adapters.has(version) else self._active

    def _kwargs(self, messages: list[ChatMessage], params: GenParams, model: str
                ) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if params.repetition_penalty != 1.0:
            extra = {"repetition_penalty": params.repetition_penalty,
                     "repeat_penalty": params.repetition_penalty}
        if params.ignore_eos:  # vLLM, llama.cpp and NightOwl's server read it
            extra["ignore_eos"] = True
        kwargs: dict[str, Any] = {
            "model": model, "messages": messages, "stream": True,
            "max_tokens": params.max_new_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "extra_body": extra or None,
            "stream_options": {"include_usage": True}}
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None and params.temperature == 0:  # see the module docstring
            kwargs["seed"] = params.seed
        return kwargs

    async def _open_stream(self, kwargs: dict[str, Any], adapter_name: str | None
                           ) -> tuple[Any, Any, Any]:
        import openai
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, openai.InternalServerError):
                return replies.ENGINE_DEAD not in exc.message  # a dead engine stays dead
            return isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError,
                                    openai.RateLimitError))

        model = kwargs["model"]
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(RETRY_ATTEMPTS),
                    wait=wait_exponential(multiplier=0.3, max=4.0),
                    retry=retry_if_exception(retryable), reraise=True):
                with attempt:
                    stream = await self._client.chat.completions.create(**kwargs)
                    iterator = stream.__aiter__()
                    try:  # the retry covers the first chunk too
                        first = await iterator.__anext__()
                    except StopAsyncIteration:
                        first = None
                    return stream, iterator, first
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            self.adapters.mark_stale()
            raise replies.down(self.base_url, str(exc)) from exc
        except openai.RateLimitError as exc:
            raise BusyError(f"the model server at {self.base_url} is busy (429); try again "
                            "in a minute") from exc
        except openai.APIStatusError as exc:
            if (exc.status_code == 404 and adapter_name is not None
                    and replies.NO_SUCH_MODEL in exc.message):
                raise _Missing(adapter_name) from exc
            if replies.ENGINE_DEAD in exc.message:
                self.adapters.mark_stale()
            raise replies.refused(self.base_url, exc.status_code, exc.message, model) from exc
        raise ModelError("unreachable")  # pragma: no cover

    async def _open(self, messages: list[ChatMessage], params: GenParams, version: str | None,
                    explicit: bool) -> tuple[Any, Any, Any, str | None]:
        """Open the stream on ``version``; reload lost adapters first (and after a 404).

        Returns the stream, its iterator, the first chunk and the version that answers: an
        ACTIVE request whose adapter the server lost and cannot load again is answered by the
        base model (logged; the active pointer is cleared so the learning service's follower
        tries to load it again); an explicit request for it raises AdapterError."""
        for again in (False, True):
            if self.adapters.stale or again:
                try:
                    await self.adapters.restore()
                except httpx.HTTPError as exc:
                    raise replies.down(self.base_url, str(exc) or type(exc).__name__) from exc
            if version is not None and not self.adapters.has(version):
                lost = (f"adapter {version} was lost by the server at {self.base_url} and "
                        "could not be loaded again (see the log)")
                if explicit:
                    raise AdapterError(lost + "; roll back or re-train.")
                log.error("%s: answering with the base model", lost)
                if self._active == version:
                    self._active = None
                if self._canary.version == version:
                    self._canary.version = None
                version = None
            name = self.adapters.name(version) if version is not None else None
            try:
                opened = await self._open_stream(self._kwargs(messages, params, name or self.name),
                                                 name)
                return (*opened, version)
            except _Missing:
                if again:
                    break
                self.adapters.mark_stale()
        raise AdapterError(f"the server at {self.base_url} does not know adapter {version} even "
                           "after loading it again; check the server log.")

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        import openai

        params = params or self.cfg.gen_params()
        limit = self.cfg.max_batch_size + self.cfg.max_queue
        if self._inflight >= limit:
            raise BusyError(f"I'm busy right now: {self._inflight} answers are in progress or "
                            "waiting. Please try again in a minute.", position=self._inflight)
        version = self._resolve(adapter)
        if info is not None:
            info.adapter = version
            info.prompt_tokens = self.count_tokens(messages)
        self._inflight += 1
        self.adapters.acquire(version)
        stream: Any = None
        count = 0
        try:
            stream, iterator, chunk, answered = await self._open(
                list(messages), params, version, explicit=adapter not in (ACTIVE, BASE))
            if answered != version:  # fell back to the base model
                self.adapters.release(version)
                version = answered
                if info is not None:
                    info.adapter = None
            while chunk is not None:
                if chunk.usage is not None and info is not None:
                    info.prompt_tokens = chunk.usage.prompt_tokens or info.prompt_tokens
                    info.completion_tokens = chunk.usage.completion_tokens or count
                for choice in chunk.choices or []:
                    text = choice.delta.content if choice.delta else None
                    if text:
                        count += 1
                        if info is not None:
                            info.completion_tokens = count
                        yield text
                    if choice.finish_reason and info is not None:
                        info.finish_reason = choice.finish_reason
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    chunk = None
        except (openai.APIConnectionError, openai.APITimeoutError, httpx.HTTPError) as exc:
            self.adapters.mark_stale()
            raise replies.down(self.base_url, str(exc) or type(exc).__name__,
                               started=count > 0) from exc
        except openai.APIError as exc:  # an SSE ``error`` event after the 200
            if replies.ENGINE_DEAD in exc.message:
                self.adapters.mark_stale()
                raise replies.engine_dead(self.base_url, started=count > 0) from exc
            raise ModelError(f"the model server at {self.base_url} failed mid-answer: "
                             f"{exc.message}") from exc
        finally:
            self._inflight -= 1
            self._served += 1
            self._tokens.append((time.monotonic(), count))
            self.adapters.release(version)
            self._spawn_prune()
            if stream is not None:
                try:
                    await stream.close()
                except Exception:  # closing a broken stream must not mask the real error
                    pass

    # ---- adapters ----------------------------------------------------------------------------
    def _kept(self) -> str:
        return self._active or "the base model"

    def _spawn_prune(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a stream finalised outside the loop: prune on the next call
            return
        if not self.adapters.versions():
            return
        task = loop.create_task(self._prune())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prune(self) -> None:
        try:
            await self.adapters.prune(self._active, self._canary.version)
        except Exception:  # unloading is housekeeping: never fail an answer for it
            log.exception("pruning adapters on %s failed", self.base_url)

    async def wait_unloads(self) -> None:
        """Wait for the unloads that ended streams started in the background."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        old = self._active
        if path is None:
            self._active = None
        else:
            label = version or Path(path).name
            await self.adapters.ensure(Path(path), label, self._kept())
            self._active = label
        if old != self._active and old != self._canary.version:
            self.adapters.retire(old)
        await self._prune()

    async def load_adapter(self, path: Path, version: str) -> None:
        await self.adapters.ensure(Path(path), version, self._kept())
        self._canary.loaded(version, self._active)
        await self._prune()

    @property
    def canary(self) -> CanaryState:
        return CanaryState(self._canary.version, self._canary.share)

    async def set_canary_share(self, share: float) -> None:
        self._canary.set_share(share)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        self._tokens = [(t, n) for t, n in self._tokens if now - t <= 10.0]
        return {"backend": "openai", "base_url": self.base_url, "running": self._inflight,
                "queue": 0, "adapter": self._active, "canary": self._canary.version,
                "canary_share": self._canary.share,
                "loaded_adapters": sorted(self.adapters.versions()),
                "served_names": {v: self.adapters.name(v) for v in self.adapters.versions()},
                "adapter_reloads": self.adapters.reloads, "served": self._served,
                "tokens_per_s": round(sum(n for _, n in self._tokens) / 10.0, 1)}

    async def aclose(self) -> None:
        await self.wait_unloads()
        await self._client.close()
        await self._http.aclose()
        await asyncio.sleep(0)
