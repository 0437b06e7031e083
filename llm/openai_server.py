"""A small OpenAI-compatible HTTP server on top of ANY ChatModel (aiohttp).

Endpoints: ``POST /v1/chat/completions`` (``stream`` true -> server-sent events, false -> one JSON
object), ``GET /v1/models`` and vLLM's ``POST /v1/load_lora_adapter`` (``{lora_name, lora_path}``;
afterwards ``model=lora_name`` selects that adapter per request). Other tools can use NightOwl's
model through it, and the tests run the openai backend against it on loopback.

Request fields understood: messages, stream, max_tokens / max_completion_tokens, temperature,
top_p, stop (string or list), seed, repetition_penalty (also llama.cpp's repeat_penalty),
ignore_eos (vLLM's and llama.cpp's: answers run to max_tokens, for benchmarks).
``model`` selects the adapter: a loaded adapter version, ``"base"`` for no adapter, anything
else (e.g. the served model name) for the active adapter. Errors use OpenAI's error shape;
a full queue answers 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from llm.base import ACTIVE, BASE, ChatModel, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.errors import BusyError, ModelError

MODEL_KEY = web.AppKey("model", ChatModel)
API_KEY = web.AppKey("api_key", str)
DEFAULTS_KEY = web.AppKey("defaults", GenParams)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)


def _params(body: dict[str, Any], defaults: GenParams) -> GenParams:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    rp = body.get("repetition_penalty", body.get("repeat_penalty"))
    return GenParams(
        max_new_tokens=int(max_tokens) if max_tokens else defaults.max_new_tokens,
        temperature=float(body.get("temperature", defaults.temperature)),
        top_p=float(body.get("top_p", defaults.top_p)),
        repetition_penalty=float(rp) if rp is not None else defaults.repetition_penalty,
        stop=tuple(str(s) for s in stop),
        seed=int(body["seed"]) if body.get("seed") is not None else None,
        ignore_eos=bool(body.get("ignore_eos", False)))


def _check(params: GenParams) -> str | None:
    if not 0.0 <= params.temperature <= 2.0:
        return "temperature must be between 0 and 2"
    if not 0.0 < params.top_p <= 1.0:
        return "top_p must be in (0, 1]"
    if not 1 <= params.max_new_tokens <= 1_000_000:
        return "max_tokens must be a positive integer"
    if not 0.5 <= params.repetition_penalty <= 3.0:
        return "repetition_penalty must be between 0.5 and 3"
    return None


async def _models(request: web.Request) -> web.Response:
    model = request.app[MODEL_KEY]
    ids = [model.name]
    ids += [v for v in model.stats().get("loaded_adapters", []) if v not in ids]
    now = int(time.time())
    return web.json_response({"object": "list", "data": [
        {"id": i, "object": "model", "created": now, "owned_by": "nightowl"} for i in ids]})


def _authorized(request: web.Request) -> bool:
    key = request.app[API_KEY]
    return not key or request.headers.get("Authorization", "") == f"Bearer {key}"


async def _load_lora(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "invalid API key", "authentication_error")
    try:
        body = await request.json()
        name, path = str(body["lora_name"]), Path(str(body["lora_path"]))
    except (ValueError, KeyError, TypeError):
        return _error(400, "body must be JSON with lora_name and lora_path")
    try:
        await request.app[MODEL_KEY].load_adapter(path, name)
    except ModelError as exc:
        return _error(400, str(exc))
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def _chat(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _error(401, "invalid API key", "authentication_error")
    model = request.app[MODEL_KEY]
    try:
        body = await request.json()
        messages = [{"role": str(m["role"]), "content": _content(m.get("content"))}
                    for m in body["messages"]]
        params = _params(body, request.app[DEFAULTS_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, f"invalid request: {exc}")
    if not messages:
        return _error(400, "messages must not be empty")
    problem = _check(params)
    if problem:
        return _error(400, problem)
    requested = str(body.get("model") or "")
    loaded = set(model.stats().get("loaded_adapters", []))
    adapter = BASE if requested == "base" else requested if requested in loaded else ACTIVE
    info = StreamInfo()
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    name = requested or model.name
    gen = model.stream(messages, params, adapter=adapter, info=info)
    async with contextlib.aclosing(gen):  # type: ignore[type-var]
        if not body.get("stream"):
            try:
                text = "".join([d async for d in gen])
            except BusyError as exc:
                return _error(429, str(exc), "rate_limit_error")
            except ModelError as exc:
                return _error(500, str(exc), "server_error")
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": info.finish_reason or "stop"}],
                "usage": {"prompt_tokens": info.prompt_tokens,
                          "completion_tokens": info.completion_tokens,
                          "total_tokens": info.prompt_tokens + info.completion_tokens},
                "system_fingerprint": f"nightowl-{info.adapter or 'base'}"})
        try:  # get the first delta before committing to a 200 stream, so errors keep a status
            first = await gen.__anext__()
        except StopAsyncIteration:
            first = None
        except BusyError as exc:
            return _error(429, str(exc), "rate_limit_error")
        except ModelError as exc:
            return _error(500, str(exc), "server_error")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": name, "system_fingerprint": f"nightowl-{info.adapter or 'base'}",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        try:
            if first is not None:
                await send({"content": first})
                async for delta in gen:
                    await send({"content": delta})
            await send({}, info.finish_reason or "stop")
        except ModelError as exc:
            err = {"error": {"message": str(exc), "type": "server_error"}}
            await resp.write(f"data: {json.dumps(err)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": name, "choices": [],
                     "usage": {"prompt_tokens": info.prompt_tokens,
                               "completion_tokens": info.completion_tokens,
                               "total_tokens": info.prompt_tokens + info.completion_tokens}}
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def make_app(model: ChatModel, api_key: str = "", defaults: GenParams | None = None
             ) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[MODEL_KEY] = model
    app[API_KEY] = api_key
    app[DEFAULTS_KEY] = defaults or ModelConfig().gen_params()
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/load_lora_adapter", _load_lora)
    return app


class OpenAIServer:
    """Start/stop the server on host:port (port 0 = any free port); ``base_url`` ends in /v1."""

    def __init__(self, model: ChatModel, host: str = "127.0.0.1", port: int = 8000, *,
                 api_key: str = "", defaults: GenParams | None = None) -> None:
        self.model, self.host, self.port = model, host, port
        self.api_key, self.defaults = api_key, defaults
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(make_app(self.model, self.api_key, self.defaults),
                                     access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:  # the port actually bound (port 0: one the OS chose)
            self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}/v1"
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
                       api_key: str = "", defaults: GenParams | None = None) -> None:
    """Serve until cancelled (e.g. from ``nightowl serve-openai``)."""
    async with OpenAIServer(model, host, port, api_key=api_key, defaults=defaults):
        await asyncio.Event().wait()
