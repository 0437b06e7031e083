"""OpenAIChatModel against NightOwl's own OpenAI-compatible server (FakeChatModel) on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from llm.base import ChatMessage, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.errors import AdapterError, BusyError, ModelError
from llm.fake import FakeChatModel
from llm.openai_backend import OpenAIChatModel
from llm.openai_server import OpenAIServer

MSGS: list[ChatMessage] = [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "hello there owl"}]


def fake_adapter(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 4)},
              str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeChatModel, OpenAIChatModel]]:
    fake = FakeChatModel(name="fake-served")
    async with OpenAIServer(fake, "127.0.0.1", 0, api_key="s3cret") as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="fake-served", timeout_s=5),
                                 api_key="s3cret")
        yield fake, remote
        await remote.aclose()


async def test_streams_text_and_sends_settings(served: tuple[FakeChatModel,
                                                             OpenAIChatModel]) -> None:
    fake, remote = served
    info = StreamInfo()
    params = GenParams(max_new_tokens=50, temperature=0.0, top_p=0.5, repetition_penalty=1.3,
                       stop=("zzz",), seed=7, ignore_eos=True)
    deltas = [d async for d in remote.stream(MSGS, params, info=info)]
    assert len(deltas) == 5 and "".join(deltas) == "You said: hello there owl."
    assert info.completion_tokens == 5 and info.finish_reason == "stop"
    got = fake.calls[-1]
    assert got["messages"] == MSGS
    assert got["params"] == params  # every setting crossed the wire


async def test_adapter_loading_endpoint(served: tuple[FakeChatModel, OpenAIChatModel],
                                        tmp_path: Path) -> None:
    fake, remote = served
    await remote.set_adapter(fake_adapter(tmp_path / "v0003"), "v0003")
    assert remote.active_adapter == "v0003"
    assert fake.adapters["v0003"] == (tmp_path / "v0003").resolve()
    info = StreamInfo()
    _ = [d async for d in remote.stream(MSGS, GenParams(max_new_tokens=2), info=info)]
    assert info.adapter == "v0003"
    with pytest.raises(AdapterError, match="previous adapter is kept"):
        await remote.set_adapter(tmp_path / "missing", "v0004")
    assert remote.active_adapter == "v0003"


async def test_non_streaming_and_models_endpoints(served: tuple[FakeChatModel,
                                                               OpenAIChatModel]) -> None:
    _, remote = served
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        r = await client.post("/chat/completions", json={"messages": MSGS, "stream": False},
                              headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "You said: hello there owl."
        assert body["usage"]["completion_tokens"] == 5
        r = await client.post("/chat/completions", json={"messages": MSGS},
                              headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await client.post("/chat/completions", json={"messages": MSGS, "temperature": 9},
                              headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
        r = await client.get("/models")
        assert r.json()["data"][0]["id"] == "fake-served"


async def test_busy_is_retried_then_reported(served: tuple[FakeChatModel, OpenAIChatModel],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake, remote = served
    fake.fail_next = BusyError("busy, you are number 3 in line", position=3)
    text = "".join([d async for d in remote.stream(MSGS)])  # one 429, retried with backoff
    assert text == "You said: hello there owl."

    async def always_busy(*a: object, **k: object) -> AsyncIterator[str]:
        raise BusyError("busy, you are number 9 in line", position=9)
        yield ""

    monkeypatch.setattr(fake, "stream", always_busy)
    with pytest.raises(BusyError, match="busy"):
        _ = [d async for d in remote.stream(MSGS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_down_server_clear_error() -> None:
    remote = OpenAIChatModel(ModelConfig(backend="openai", name="x", timeout_s=2,
                                         base_url=f"http://127.0.0.1:{free_port()}/v1"))
    try:
        with pytest.raises(ModelError, match=r"Is the server running\?"):
            _ = [d async for d in remote.stream(MSGS)]
        assert remote.stats()["running"] == 0
    finally:
        await remote.aclose()


async def test_server_without_lora_endpoint(tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    remote = OpenAIChatModel(ModelConfig(backend="openai", name="x", timeout_s=2,
                                         base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(AdapterError, match="cannot load LoRA adapters at runtime"):
            await remote.set_adapter(fake_adapter(tmp_path / "v1"), "v1")
        assert remote.active_adapter is None
        with pytest.raises(ModelError, match=r"refused the request \(500: "):  # retried, reported
            _ = [d async for d in remote.stream(MSGS)]
    finally:
        await remote.aclose()
        await runner.cleanup()


async def test_approximate_count_tokens_is_generous() -> None:
    remote = OpenAIChatModel(ModelConfig(backend="openai", name="x",
                                         base_url="http://127.0.0.1:9/v1"))
    short: Sequence[ChatMessage] = [{"role": "user", "content": "a" * 400}]
    assert remote.count_tokens(short) >= 100
    await remote.aclose()
    await asyncio.sleep(0)
