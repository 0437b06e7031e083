"""Shared bits of the cluster tests: prompts, greedy settings, the server's model list."""

from __future__ import annotations

from typing import Any

import httpx

from llm.base import ACTIVE, ChatMessage, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.openai_backend import OpenAIChatModel

GREEDY = GenParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0)


def ask(q: str) -> list[ChatMessage]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": q}]


def backend(base_url: str, name: str = "embedded", **kw: Any) -> OpenAIChatModel:
    return OpenAIChatModel(ModelConfig(backend="openai", base_url=base_url, name=name,
                                       timeout_s=120, **kw))


async def answer(model: OpenAIChatModel, q: str, adapter: str = ACTIVE,
                 params: GenParams = GREEDY) -> tuple[str, StreamInfo]:
    info = StreamInfo()
    text = "".join([d async for d in model.stream(ask(q), params, adapter=adapter, info=info)])
    return text, info


async def served(base_url: str) -> dict[str, dict[str, Any]]:
    """``GET /v1/models`` by id."""
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(f"{base_url}/models")
    resp.raise_for_status()
    return {m["id"]: m for m in resp.json()["data"]}
