"""OpenAIChatModel: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, NightOwl's own).

* Streaming chat completions through the ``openai`` client against ``[model] base_url`` (ending
  in ``/v1``) with model name ``[model] name``; the API key is read from the environment
  variable named by ``[model] api_key_env`` (many local servers need none).
* ``[model] timeout_s`` bounds connecting and each read. Connection errors, timeouts, 429 and
  5xx answers are retried with exponential backoff (tenacity, 3 attempts) only *before the first
  token*; once text has streamed, an error ends the answer with a ModelError.
* Adapters (vLLM): ``set_adapter``/``load_adapter`` POST ``/v1/load_lora_adapter``
  ``{lora_name: version, lora_path: path}`` (the path must be readable by the server: same host
  or shared storage; vLLM needs ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)
  and requests then select the adapter by sending ``model=version``. Servers without that
  endpoint (llama.cpp server, Ollama) get a clear AdapterError; the base model keeps serving.
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
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from llm.adapters import validate_adapter_dir
from llm.base import ACTIVE, BASE, ChatMessage, GenParams, StreamInfo
from llm.canary import Canary
from llm.config import ModelConfig
from llm.errors import AdapterError, BusyError, ModelError

log = logging.getLogger("nightowl.llm")

RETRY_ATTEMPTS = 3


class OpenAIChatModel:
    """ChatModel backed by an OpenAI-compatible HTTP server."""

    def __init__(self, cfg: ModelConfig, api_key: str | None = None) -> None:
        import os

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
        self._key = key
        self._active: str | None = None
        self._canary = Canary(cfg.canary_share)
        self._adapters: dict[str, Path] = {}
        self._inflight = 0
        self._served = 0
        self._tokens: list[tuple[float, int]] = []

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
            if adapter not in self._adapters:
                raise AdapterError(f"adapter {adapter!r} was not loaded on the server; "
                                   "call load_adapter() first")
            return adapter
        return self._canary.pick(self._active)

    def _down(self, exc: Exception) -> ModelError:
        return ModelError(f"cannot reach the model server at {self.base_url} ({exc}). Is the "
                          "server running? Start it (vLLM, llama.cpp server, Ollama) or fix "
                          "[model] base_url.")

    async def _open_stream(self, messages: list[ChatMessage], params: GenParams,
                           model: str) -> Any:
        import openai
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

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
        if params.seed is not None:
            kwargs["seed"] = params.seed
        retryable = (openai.APIConnectionError, openai.APITimeoutError,
                     openai.InternalServerError, openai.RateLimitError)
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(RETRY_ATTEMPTS),
                    wait=wait_exponential(multiplier=0.3, max=4.0),
                    retry=retry_if_exception_type(retryable), reraise=True):
                with attempt:
                    stream = await self._client.chat.completions.create(**kwargs)
                    iterator = stream.__aiter__()
                    try:  # the retry covers the first chunk too
                        first = await iterator.__anext__()
                    except StopAsyncIteration:
                        first = None
                    return stream, iterator, first
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise self._down(exc) from exc
        except openai.RateLimitError as exc:
            raise BusyError(f"the model server at {self.base_url} is busy (429); try again "
                            "in a minute") from exc
        except openai.APIStatusError as exc:
            raise ModelError(f"the model server at {self.base_url} refused the request "
                             f"({exc.status_code}: {exc.message}). Check [model] name "
                             f"({model!r}) and api_key_env.") from exc
        raise ModelError("unreachable")  # pragma: no cover

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        import openai

        params = params or self.cfg.gen_params()
        limit = self.cfg.max_batch_size + self.cfg.max_queue
        if self._inflight >= limit:
            raise BusyError(f"I'm busy right now: {self._inflight} answers are in progress or "
                            "waiting. Please try again in a minute.", position=self._inflight)
        version = self._resolve(adapter)
        model = version or self.name
        if info is not None:
            info.adapter = version
            info.prompt_tokens = self.count_tokens(messages)
        self._inflight += 1
        stream: Any = None
        count = 0
        try:
            stream, iterator, chunk = await self._open_stream(list(messages), params, model)
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
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise self._down(exc) from exc
        except openai.APIError as exc:
            raise ModelError(f"the model server at {self.base_url} failed mid-answer: "
                             f"{exc}") from exc
        finally:
            self._inflight -= 1
            self._served += 1
            self._tokens.append((time.monotonic(), count))
            if stream is not None:
                try:
                    await stream.close()
                except Exception:  # closing a broken stream must not mask the real error
                    pass

    async def _post_lora(self, path: Path, version: str) -> None:
        import httpx

        checked = validate_adapter_dir(Path(path))
        url = f"{self.base_url}/load_lora_adapter"
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with httpx.AsyncClient(timeout=self.cfg.timeout_s) as client:
                resp = await client.post(url, json={"lora_name": version,
                                                    "lora_path": str(checked)},
                                         headers=headers)
        except httpx.HTTPError as exc:
            raise self._down(exc) from exc
        if resp.status_code in (404, 405):
            raise AdapterError(
                f"the server at {self.base_url} cannot load LoRA adapters at runtime (no "
                "/v1/load_lora_adapter endpoint). vLLM supports it when started with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; llama.cpp server and "
                "Ollama do not (merge the adapter into the model instead). Kept "
                f"{self._active or 'the base model'}.")
        if resp.status_code >= 400:
            raise AdapterError(f"the server at {self.base_url} refused adapter {version} "
                               f"({resp.status_code}: {resp.text[:300]}); kept "
                               f"{self._active or 'the base model'}.")
        self._adapters[version] = checked

    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        if path is None:
            self._active = None
            return
        label = version or Path(path).name
        if label not in self._adapters:
            await self._post_lora(Path(path), label)
        self._active = label

    async def load_adapter(self, path: Path, version: str) -> None:
        await self._post_lora(Path(path), version)
        self._canary.loaded(version, self._active)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        self._tokens = [(t, n) for t, n in self._tokens if now - t <= 10.0]
        return {"backend": "openai", "base_url": self.base_url, "running": self._inflight,
                "queue": 0, "adapter": self._active, "canary": self._canary.version,
                "loaded_adapters": sorted(self._adapters), "served": self._served,
                "tokens_per_s": round(sum(n for _, n in self._tokens) / 10.0, 1)}

    async def aclose(self) -> None:
        await self._client.close()
        await asyncio.sleep(0)
