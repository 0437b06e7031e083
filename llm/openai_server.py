"""A small OpenAI-compatible HTTP server on top of ANY ChatModel (aiohttp).

Endpoints: ``POST /v1/chat/completions`` (``stream`` true -> server-sent events, false -> one JSON
object), ``GET /v1/models`` and vLLM's ``POST /v1/load_lora_adapter`` (``{lora_name, lora_path}``;
afterwards ``model=lora_name`` selects that adapter per request). Other tools can use NightOwl's
model through it, and the tests run the openai backend against it on loopback.

``model`` selects the adapter: a loaded adapter version, ``"base"`` for no adapter, anything
else (e.g. the served model name) for the active adapter. Errors use OpenAI's error shape;
a full queue answers 429.

Invariants (the details live next to their code in :mod:`llm.serve`):
* Safe to expose: no non-loopback bind without an API key; with one, every route needs it;
  Host and Content-Type are checked (:mod:`llm.serve.guard`); requests are capped
  (:mod:`llm.serve.request`, ``[serve]``); adapters come only from the registry
  (:mod:`llm.serve.adapters`).
* A client that disconnects stops its generation: the handler is cancelled
  (``handler_cancellation``), which closes the model's stream and frees its slot or queue place.
* Error replies never carry exception text (it may name host paths); it is logged instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from llm.base import ACTIVE, BASE, ChatModel, GenParams, StreamInfo
from llm.config import ModelConfig, ServeConfig
from llm.errors import BusyError, ModelError
from llm.serve.adapters import RegistryAdapters
from llm.serve.guard import Guard, Refused, check_bind
from llm.serve.request import ChatRequest, parse_chat

log = logging.getLogger("nightowl.serve")

MODEL_KEY = web.AppKey("model", ChatModel)
DEFAULTS_KEY = web.AppKey("defaults", GenParams)
SETTINGS_KEY = web.AppKey("settings", ServeConfig)
ADAPTERS_KEY = web.AppKey("adapters", RegistryAdapters)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise Refused(400, "the body is not valid JSON") from None


async def _models(request: web.Request) -> web.Response:
    model = request.app[MODEL_KEY]
    ids = [model.name]
    ids += [v for v in model.stats().get("loaded_adapters", []) if v not in ids]
    now = int(time.time())
    return web.json_response({"object": "list", "data": [
        {"id": i, "object": "model", "created": now, "owned_by": "nightowl"} for i in ids]})


async def _load_lora(request: web.Request) -> web.Response:
    body = await _json(request)
    if not (isinstance(body, dict) and isinstance(body.get("lora_name"), str)
            and isinstance(body.get("lora_path"), str)):
        raise Refused(400, "body must be JSON with lora_name and lora_path")
    name = await request.app[ADAPTERS_KEY].load(body["lora_name"], body["lora_path"])
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


def _failure(exc: ModelError) -> Refused:
    if isinstance(exc, BusyError):
        return Refused(429, str(exc), "rate_limit_error")  # queue position only, no paths
    log.warning("request failed: %s", exc)
    return Refused(500, "the model could not answer (see the server log)", "server_error")


class _Reply:
    """The ids and helpers one chat completion shares between its chunks."""

    def __init__(self, req: ChatRequest, model_name: str, info: StreamInfo) -> None:
        self.req, self.info = req, info
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.name = req.model or model_name

    def usage(self) -> dict[str, int]:
        i = self.info
        return {"prompt_tokens": i.prompt_tokens, "completion_tokens": i.completion_tokens,
                "total_tokens": i.prompt_tokens + i.completion_tokens}

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.name,
                "system_fingerprint": f"nightowl-{self.info.adapter or 'base'}"}

    def whole(self, text: str) -> web.Response:
        return web.json_response({
            **self.head("chat.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": self.info.finish_reason or "stop"}],
            "usage": self.usage()})

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**self.head("chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()


async def _chat(request: web.Request) -> web.StreamResponse:
    model = request.app[MODEL_KEY]
    req = parse_chat(await _json(request), request.app[SETTINGS_KEY], request.app[DEFAULTS_KEY])
    loaded = set(model.stats().get("loaded_adapters", []))
    adapter = BASE if req.model == BASE else req.model if req.model in loaded else ACTIVE
    reply = _Reply(req, model.name, StreamInfo())
    gen = model.stream(req.messages, req.params, adapter=adapter, info=reply.info)
    async with contextlib.aclosing(gen):  # type: ignore[type-var]
        if not req.stream:
            try:
                text = "".join([d async for d in gen])
            except ModelError as exc:
                raise _failure(exc) from None
            return reply.whole(text)
        try:  # get the first delta before committing to a 200 stream, so errors keep a status
            first: str | None = await gen.__anext__()
        except StopAsyncIteration:
            first = None
        except ModelError as exc:
            raise _failure(exc) from None
        return await _stream(request, reply, first, gen)


async def _stream(request: web.Request, reply: _Reply, first: str | None,
                  gen: AsyncIterator[str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(reply.chunk({"role": "assistant", "content": ""}))
    try:
        if first is not None:
            await resp.write(reply.chunk({"content": first}))
            async for delta in gen:
                await resp.write(reply.chunk({"content": delta}))
        await resp.write(reply.chunk({}, reply.info.finish_reason or "stop"))
    except ModelError as exc:
        log.warning("stream failed: %s", exc)
        err = {"error": {"message": "the model stopped answering (see the server log)",
                         "type": "server_error"}}
        await resp.write(f"data: {json.dumps(err)}\n\n".encode())
    if reply.req.include_usage:
        usage = {**reply.head("chat.completion.chunk"), "choices": [], "usage": reply.usage()}
        await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def make_app(model: ChatModel, api_key: str = "", defaults: GenParams | None = None, *,
             settings: ServeConfig | None = None, adapters_dir: Path | None = None,
             host: str = "127.0.0.1") -> web.Application:
    """The application; ``adapters_dir`` is the registry (``<storage>/adapters``), or None to
    load no adapters at runtime."""
    settings = settings or ServeConfig()
    guard = Guard(api_key, host, tuple(settings.allowed_hosts))
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[guard.middleware()])
    app[MODEL_KEY] = model
    app[DEFAULTS_KEY] = defaults or ModelConfig().gen_params()
    app[SETTINGS_KEY] = settings
    app[ADAPTERS_KEY] = RegistryAdapters(model, adapters_dir, settings.max_adapters)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/load_lora_adapter", _load_lora)
    return app


class OpenAIServer:
    """Start/stop the server on host:port (port 0 = any free port); ``base_url`` ends in /v1.

    ``start`` refuses a non-loopback host without ``api_key`` (ModelError saying what to do).
    """

    def __init__(self, model: ChatModel, host: str = "127.0.0.1", port: int = 8000, *,
                 api_key: str = "", defaults: GenParams | None = None,
                 settings: ServeConfig | None = None, adapters_dir: Path | None = None) -> None:
        self.model, self.host, self.port = model, host, port
        self.api_key, self.defaults = api_key, defaults
        self.settings = settings or ServeConfig()
        self.adapters_dir = adapters_dir
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        check_bind(self.host, self.api_key, self.settings.api_key_env)
        app = make_app(self.model, self.api_key, self.defaults, settings=self.settings,
                       adapters_dir=self.adapters_dir, host=self.host)
        # handler_cancellation: a client that disconnects cancels its handler, which closes the
        # model's stream (aiohttp's default lets a non-streaming answer run to its end).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:  # the port actually bound (port 0: one the OS chose)
            self.port = int(self._runner.addresses[0][1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{shown}:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_openai(model: ChatModel, host: str = "127.0.0.1", port: int = 8000, *,
                       api_key: str = "", defaults: GenParams | None = None,
                       settings: ServeConfig | None = None,
                       adapters_dir: Path | None = None) -> None:
    """Serve until cancelled."""
    async with OpenAIServer(model, host, port, api_key=api_key, defaults=defaults,
                            settings=settings, adapters_dir=adapters_dir):
        await asyncio.Event().wait()
