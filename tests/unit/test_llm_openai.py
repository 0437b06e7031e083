"""OpenAIChatModel against NightOwl's own OpenAI-compatible server (FakeChatModel) on loopback,
and the server's guards: API key on every route, Host and Content-Type, registry-only adapters,
request caps, disconnects, errors without host paths."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from llm.base import ACTIVE, ChatMessage, GenParams, StreamInfo
from llm.config import ModelConfig, ServeConfig
from llm.errors import AdapterError, BusyError, ModelError
from llm.fake import FakeChatModel
from llm.openai_backend import OpenAIChatModel
from llm.openai_server import OpenAIServer

MSGS: list[ChatMessage] = [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "hello there owl"}]
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def fake_adapter(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 4)},
              str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FakeChatModel, OpenAIChatModel]]:
    fake = FakeChatModel(name="fake-served")
    async with OpenAIServer(fake, "127.0.0.1", 0, api_key=KEY,
                            adapters_dir=tmp_path / "adapters") as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="fake-served", timeout_s=5),
                                 api_key=KEY)
        yield fake, remote
        await remote.aclose()


async def test_streams_text_and_sends_settings(tmp_path: Path) -> None:
    fake = FakeChatModel(name="fake-served")
    bench = ServeConfig(allow_ignore_eos=True)  # ignore_eos only when the operator allows it
    async with OpenAIServer(fake, "127.0.0.1", 0, settings=bench) as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="fake-served", timeout_s=5))
        info = StreamInfo()
        params = GenParams(max_new_tokens=50, temperature=0.0, top_p=0.5,
                           repetition_penalty=1.3, stop=("zzz",), seed=7, ignore_eos=True)
        deltas = [d async for d in remote.stream(MSGS, params, info=info)]
        await remote.aclose()
    assert len(deltas) == 5 and "".join(deltas) == "You said: hello there owl."
    assert info.completion_tokens == 5 and info.finish_reason == "stop"
    got = fake.calls[-1]
    assert got["messages"] == MSGS
    assert got["params"] == params  # every setting crossed the wire


async def test_adapter_loading_endpoint(served: tuple[FakeChatModel, OpenAIChatModel],
                                        tmp_path: Path) -> None:
    fake, remote = served
    v3 = fake_adapter(tmp_path / "adapters" / "v0003")
    await remote.set_adapter(v3, "v0003")
    assert remote.active_adapter == "v0003"
    assert fake.adapters["v0003"] == v3.resolve()
    info = StreamInfo()
    _ = [d async for d in remote.stream(MSGS, GenParams(max_new_tokens=2), info=info)]
    assert info.adapter == "v0003"
    with pytest.raises(AdapterError, match="previous adapter is kept"):
        await remote.set_adapter(tmp_path / "adapters" / "v0004", "v0004")  # missing
    assert remote.active_adapter == "v0003"


async def test_non_streaming_and_models_endpoints(served: tuple[FakeChatModel,
                                                               OpenAIChatModel]) -> None:
    _, remote = served
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        r = await client.post("/chat/completions", json={"messages": MSGS, "stream": False},
                              headers=AUTH)
        assert r.status_code == 200
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "You said: hello there owl."
        assert body["usage"]["completion_tokens"] == 5
        r = await client.post("/chat/completions", json={"messages": MSGS, "temperature": 9},
                              headers=AUTH)
        assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
        r = await client.get("/models", headers=AUTH)
        assert r.json()["data"][0]["id"] == "fake-served"


async def test_every_route_needs_the_key(served: tuple[FakeChatModel, OpenAIChatModel],
                                         tmp_path: Path) -> None:
    fake, remote = served
    fake_adapter(tmp_path / "adapters" / "v0001")
    lora = {"lora_name": "v0001", "lora_path": str(tmp_path / "adapters" / "v0001")}
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Bearer {KEY}x"}):
            assert (await client.get("/models", headers=headers)).status_code == 401
            r = await client.post("/chat/completions", json={"messages": MSGS}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
            r = await client.post("/load_lora_adapter", json=lora, headers=headers)
            assert r.status_code == 401
            assert (await client.get("/anything", headers=headers)).status_code == 401
        assert fake.calls == [] and fake.adapters == {}  # nothing ran without the key
        assert (await client.get("/anything", headers=AUTH)).status_code == 404
        assert (await client.get("/models", headers=AUTH)).status_code == 200


async def test_non_loopback_bind_needs_a_key() -> None:
    fake = FakeChatModel()
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.org"):
        with pytest.raises(ModelError, match=r"without an API key.*NIGHTOWL_API_KEY"):
            await OpenAIServer(fake, host, 0).start()
    async with OpenAIServer(fake, "localhost", 0) as server:  # loopback names need none
        assert server.base_url.startswith("http://localhost:")


async def test_host_header_is_checked(tmp_path: Path) -> None:
    fake = FakeChatModel()
    settings = ServeConfig(allowed_hosts=["owl.lan"])
    async with OpenAIServer(fake, "127.0.0.1", 0, settings=settings) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            for host in ("attacker.example", f"attacker.example:{server.port}", "127.0.0.2.nip.io"):
                r = await client.post("/chat/completions", json={"messages": MSGS},
                                      headers={"Host": host})
                assert r.status_code == 403, host
                assert (await client.get("/models", headers={"Host": host})).status_code == 403
            assert fake.calls == []  # a rebinding page gets nothing run and nothing back
            for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "owl.lan",
                         "OWL.LAN:8000", f"[::1]:{server.port}"):
                r = await client.get("/models", headers={"Host": host})
                assert r.status_code == 200, host


def test_host_rule_on_every_interface() -> None:
    from llm.serve.guard import Guard

    wide = Guard(KEY, "0.0.0.0")
    assert wide.host_allowed("192.0.2.10:8000") and wide.host_allowed("[2001:db8::1]:8000")
    assert not wide.host_allowed("owl.attacker.example:8000")  # a name can be rebound
    assert Guard(KEY, "0.0.0.0", ("*",)).host_allowed("anything.example")
    narrow = Guard("", "127.0.0.1")
    assert not narrow.host_allowed("192.0.2.10") and narrow.host_allowed("localhost.")


async def test_post_must_be_json(served: tuple[FakeChatModel, OpenAIChatModel],
                                 tmp_path: Path) -> None:
    fake, remote = served
    fake_adapter(tmp_path / "adapters" / "v0001")
    lora = json.dumps({"lora_name": "v0001", "lora_path": "v0001"})
    chat = json.dumps({"messages": MSGS})
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            headers = {**AUTH, "Content-Type": ctype}
            r = await client.post("/chat/completions", content=chat, headers=headers)
            assert r.status_code == 415
            r = await client.post("/load_lora_adapter", content=lora, headers=headers)
            assert r.status_code == 415
        assert fake.calls == [] and fake.adapters == {}  # the "simple" cross-site POST did nothing
        r = await client.post("/load_lora_adapter", content=lora,
                              headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 200 and "v0001" in fake.adapters


async def test_adapters_only_from_the_registry(served: tuple[FakeChatModel, OpenAIChatModel],
                                               tmp_path: Path) -> None:
    fake, remote = served
    reg = tmp_path / "adapters"
    fake_adapter(reg / "v0001")
    outside = fake_adapter(tmp_path / "elsewhere" / "v0002")
    (reg / "v0002").symlink_to(outside)  # a symlink out of the registry
    fake_adapter(reg / "v0003")
    (reg / "v0003" / "adapter_model.safetensors").unlink()
    (reg / "v0003" / "adapter_model.safetensors").symlink_to(
        outside / "adapter_model.safetensors")  # a file that points out of its folder
    fake_adapter(tmp_path / "adapters" / "candidate")  # in the registry dir, not a version

    async def load(name: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=remote.base_url) as client:
            return await client.post("/load_lora_adapter", headers=AUTH,
                                     json={"lora_name": name, "lora_path": path})

    for name, path in (("v0002", str(outside)), ("v0002", str(reg / "v0002")),
                       ("v0003", str(reg / "v0003")), ("candidate", str(reg / "candidate")),
                       ("v0001", str(reg / "v0001" / ".." / ".." / "elsewhere" / "v0002")),
                       ("v0001", "/etc"), ("v0009", str(reg / "v0009"))):
        r = await load(name, path)
        assert r.status_code == 400, (name, path)
        assert str(tmp_path) not in r.text  # no host path in the reply
    assert fake.adapters == {}
    r = await load("v0001", "v0001")  # relative to the registry
    assert r.status_code == 200 and fake.adapters == {"v0001": (reg / "v0001").resolve()}


async def test_a_label_is_never_repointed(served: tuple[FakeChatModel, OpenAIChatModel],
                                          tmp_path: Path) -> None:
    fake, remote = served
    reg = tmp_path / "adapters"
    v1, v2 = fake_adapter(reg / "v0001"), fake_adapter(reg / "v0002")
    await remote.set_adapter(v1, "v0001")  # the bot's active label
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        r = await client.post("/load_lora_adapter", headers=AUTH,
                              json={"lora_name": "v0001", "lora_path": str(v2)})
        assert r.status_code == 409 and "never re-pointed" in r.json()["error"]["message"]
        r = await client.post("/load_lora_adapter", headers=AUTH,
                              json={"lora_name": "mine", "lora_path": str(v2)})
        assert r.status_code == 400 and "v0002" in r.json()["error"]["message"]
        r = await client.post("/load_lora_adapter", headers=AUTH,  # the same again: fine
                              json={"lora_name": "v0001", "lora_path": str(v1)})
        assert r.status_code == 200
    assert fake.adapters == {"v0001": v1.resolve()}


async def test_loaded_adapters_are_capped(tmp_path: Path) -> None:
    fake = FakeChatModel()
    reg = tmp_path / "adapters"
    for i in range(1, 4):
        fake_adapter(reg / f"v000{i}")
    async with OpenAIServer(fake, "127.0.0.1", 0, adapters_dir=reg,
                            settings=ServeConfig(max_adapters=2)) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            codes = [(await client.post("/load_lora_adapter", json={
                "lora_name": f"v000{i}", "lora_path": f"v000{i}"})).status_code
                for i in (1, 2, 3, 1)]
            r = await client.post("/load_lora_adapter",
                                  json={"lora_name": "v0003", "lora_path": "v0003"})
    assert codes == [200, 200, 429, 200]  # reloading a loaded one takes no place
    assert "max_adapters" in r.json()["error"]["message"] and sorted(fake.adapters) == [
        "v0001", "v0002"]


async def test_no_registry_no_runtime_adapters(tmp_path: Path) -> None:
    fake = FakeChatModel()
    fake_adapter(tmp_path / "v0001")
    async with OpenAIServer(fake, "127.0.0.1", 0) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            r = await client.post("/load_lora_adapter", json={
                "lora_name": "v0001", "lora_path": str(tmp_path / "v0001")})
    assert r.status_code == 403 and fake.adapters == {}


@pytest.mark.parametrize(("extra", "needle"), [
    ({"messages": MSGS * 200}, "too many messages"),
    ({"stop": [f"s{i}" for i in range(5)]}, "too many stop strings"),
    ({"stop": "x" * 65}, "longer than 64"),
    ({"stop": [1, 2]}, "stop must be"),
    ({"max_tokens": 2049}, "max_tokens must be an integer from 1 to 2048"),
    ({"max_tokens": 1_000_000}, "max_tokens"),
    ({"ignore_eos": True}, "allow_ignore_eos"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": []}, "non-empty"),
])
async def test_requests_are_capped(served: tuple[FakeChatModel, OpenAIChatModel],
                                   extra: dict[str, Any], needle: str) -> None:
    fake, remote = served
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        r = await client.post("/chat/completions", json={"messages": MSGS, **extra},
                              headers=AUTH)
    assert r.status_code == 400 and needle in r.json()["error"]["message"]
    assert fake.calls == []


async def test_body_size_is_capped() -> None:
    fake = FakeChatModel()
    settings = ServeConfig(max_body_bytes=4096)
    async with OpenAIServer(fake, "127.0.0.1", 0, settings=settings) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            big = [{"role": "user", "content": "x" * 5000}]
            r = await client.post("/chat/completions", json={"messages": big})
            assert r.status_code == 413 and r.json()["error"]["code"] == 413
            ok = await client.post("/chat/completions", json={"messages": MSGS})
            assert ok.status_code == 200
    assert len(fake.calls) == 1


class WatchedModel(FakeChatModel):
    """The fake, plus events: a request started, and its stream was closed (finished or not)."""

    def __init__(self) -> None:
        super().__init__(lambda m: " ".join(["word"] * 400), delay_s=0.01)
        self.started = asyncio.Event()
        self.closed = asyncio.Event()
        self.finished: bool | None = None

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        done = False
        try:
            async for delta in super().stream(messages, params, adapter=adapter, info=info):
                self.started.set()
                yield delta
            done = True
        finally:
            self.finished = done
            self.closed.set()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_disconnected_client_stops_its_generation(stream: bool) -> None:
    model = WatchedModel()
    async with OpenAIServer(model, "127.0.0.1", 0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        body = json.dumps({"messages": MSGS, "stream": stream, "max_tokens": 400}).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.wait_for(model.started.wait(), 10)
        if stream:  # the answer is on its way to the client
            assert b"data: " in await asyncio.wait_for(reader.readuntil(b"data: "), 10)
        writer.close()  # the client goes away mid-answer
        await writer.wait_closed()
        await asyncio.wait_for(model.closed.wait(), 3)  # 400 words take 4 s: not run to the end
    assert model.finished is False


async def test_errors_do_not_reveal_host_paths(served: tuple[FakeChatModel,
                                                             OpenAIChatModel]) -> None:
    fake, remote = served
    secret = "/home/owl/private/var/adapters/v0003/adapter_model.safetensors"
    async with httpx.AsyncClient(base_url=remote.base_url) as client:
        for stream in (False, True):
            fake.fail_next = ModelError(f"cannot read {secret}")
            r = await client.post("/chat/completions", json={"messages": MSGS, "stream": stream},
                                  headers=AUTH)
            assert r.status_code == 500 and "/home/owl" not in r.text
            assert "server log" in r.json()["error"]["message"]


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
