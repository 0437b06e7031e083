"""OpenAIChatModel against a small aiohttp imitation of vLLM 0.32 that replays the exact replies
recorded from the real server (.helpers/peers_report.md): error mapping, versioned adapter names,
pinning and unloading, restart detection, the base-model check, no ``seed`` when sampling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llm.base import BASE, ChatMessage, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.errors import AdapterError, ModelError
from llm.openai_backend import OpenAIChatModel

MSGS: list[ChatMessage] = [{"role": "user", "content": "hello owl"}]
DEAD = ("EngineCore encountered an issue. See stack trace (above) for the root cause.")
SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152}


def err(message: str, type_: str, code: int, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param,
                                        "code": code}}, status=code)


class FakeVllm:
    """Routes and replies of ``vllm.entrypoints.openai.api_server`` (LoRA and runtime updating
    on, unless ``mode`` says otherwise)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.loaded: dict[str, str] = {}  # lora_name -> lora_path
        self.mode = "ok"  # ok | no-runtime | no-lora | dead | dead500
        self.chats: list[dict[str, Any]] = []
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.hold: asyncio.Event | None = None  # chats wait on it after their first chunk
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeVllm:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def restart(self) -> None:
        self.loaded.clear()  # runtime adapters do not survive a restart
        self.mode = "ok"

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": "embedded", "object": "model", "owned_by": "vllm",
                 "root": str(self.model_dir), "parent": None, "max_model_len": 2048}]
        data += [{"id": n, "object": "model", "owned_by": "vllm", "root": p,
                  "parent": "embedded", "max_model_len": None} for n, p in self.loaded.items()]
        return web.json_response({"object": "list", "data": data})

    async def load(self, request: web.Request) -> web.Response:
        if self.mode == "no-runtime":
            return web.json_response({"detail": "Not Found"}, status=404)
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        self.loads.append(name)
        if self.mode == "no-lora":
            return err("Call to add_lora method failed: Worker failed with error 'LoRA is not "
                       "enabled. Use --enable-lora to enable LoRA.', please check the stack "
                       "trace above for the root cause", "InternalServerError", 500)
        conf = json.loads((Path(path) / "adapter_config.json").read_text())
        if conf.get("r", 0) > 16:
            return err(f"Call to add_lora method failed: Worker failed with error 'LoRA rank "
                       f"{conf['r']} is greater than max_lora_rank 16.', please check the stack "
                       "trace above for the root cause", "InternalServerError", 500)
        if name in self.loaded:
            return err(f"The lora adapter '{name}' has already been loaded. If you want to load "
                       "the adapter in place, set 'load_inplace' to True.", "InvalidUserInput",
                       400)
        self.loaded[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        name = (await request.json())["lora_name"]
        self.unloads.append(name)
        if self.loaded.pop(name, None) is None:
            return err(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chats.append(body)
        model = body["model"]
        if self.mode == "dead500":
            return err(DEAD, "InternalServerError", 500)
        if model != "embedded" and model not in self.loaded:
            valid = ", ".join(["embedded", *self.loaded])
            return err(f"The model `{model}` does not exist. Valid aliases: {valid}.",
                       "NotFoundError", 404, "model")
        chars = sum(len(m["content"]) for m in body["messages"])
        if chars > 8000:
            return err("This model's maximum context length is 2048 tokens. However, your "
                       "prompt contains at least 2049 input tokens, which exceeds this limit "
                       "even without any output tokens. Please reduce the length of the input "
                       "prompt. (parameter=input_tokens, value=2049)", "BadRequestError", 400,
                       "input_tokens")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": [{"index": 0, "delta": {"content": text},
                                                 "finish_reason": finish}]}

        if self.mode == "dead":
            await send({"error": {"message": DEAD, "type": "InternalServerError",
                                  "param": None, "code": 500}})
        else:
            await send(chunk(f"[{model}]"))
            if self.hold is not None:
                await self.hold.wait()
            await send(chunk(" hi", "stop"))
            await send({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                        "model": model, "choices": [],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                  "total_tokens": 9}})
        await resp.write(b"data: [DONE]\n\n")
        return resp


def lora(path: Path, width: int = 576, rank: int = 2) -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.zeros(rank, width),
               f"{key}.lora_B.weight": torch.zeros(width, rank)},
              str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
async def vllm(tmp_path: Path) -> AsyncIterator[tuple[FakeVllm, OpenAIChatModel]]:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(SMOL))
    async with FakeVllm(model_dir) as fake:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=fake.base_url,
                                             name="embedded", timeout_s=5))
        yield fake, remote
        await remote.aclose()


async def chat(remote: OpenAIChatModel, params: GenParams | None = None, **kw: Any
               ) -> tuple[str, StreamInfo]:
    info = StreamInfo()
    text = "".join([d async for d in remote.stream(MSGS, params, info=info, **kw)])
    return text, info


async def test_versioned_names_and_no_seed_when_sampling(
        vllm: tuple[FakeVllm, OpenAIChatModel], tmp_path: Path) -> None:
    fake, remote = vllm
    await remote.set_adapter(lora(tmp_path / "adapters" / "v0007"), "v0007")
    text, info = await chat(remote, GenParams(temperature=0.3, seed=5))
    assert (text, info.adapter, info.completion_tokens) == ("[nightowl-v0007] hi", "v0007", 2)
    assert "seed" not in fake.chats[-1]  # sampled + seed kills vLLM CPU's engine
    await chat(remote, GenParams(temperature=0.0, seed=5), adapter=BASE)
    assert fake.chats[-1]["seed"] == 5 and fake.chats[-1]["model"] == "embedded"
    assert fake.loaded == {"nightowl-v0007": str((tmp_path / "adapters" / "v0007").resolve())}


async def test_dead_engine_is_a_fast_clear_error(vllm: tuple[FakeVllm, OpenAIChatModel]) -> None:
    fake, remote = vllm
    for mode in ("dead", "dead500"):
        fake.mode = mode
        before = len(fake.chats)
        with pytest.raises(ModelError, match=r"vLLM engine .* died.*bash scripts/vllm.sh start"):
            await chat(remote)
        assert len(fake.chats) == before + 1  # not retried: a dead engine stays dead


async def test_too_long_prompt_says_what_to_set(vllm: tuple[FakeVllm, OpenAIChatModel]) -> None:
    _, remote = vllm
    long: list[ChatMessage] = [{"role": "user", "content": "owl " * 3000}]
    with pytest.raises(ModelError, match=r"\(2048 tokens\): set \[model\] context_length = "
                       r"2048.*--max-model-len"):
        _ = [d async for d in remote.stream(long)]


@pytest.mark.parametrize(("mode", "needle"), [
    ("no-runtime", r"cannot load LoRA adapters at runtime.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
    ("no-lora", r"without LoRA support: restart it with --enable-lora"),
])
async def test_server_settings_errors(vllm: tuple[FakeVllm, OpenAIChatModel], tmp_path: Path,
                                      mode: str, needle: str) -> None:
    fake, remote = vllm
    await remote.set_adapter(lora(tmp_path / "v0001"), "v0001")
    fake.mode = mode
    with pytest.raises(AdapterError, match=needle + r".*Kept v0001\."):
        await remote.set_adapter(lora(tmp_path / "v0002"), "v0002")
    fake.mode = "ok"
    assert remote.active_adapter == "v0001" and (await chat(remote))[0] == "[nightowl-v0001] hi"


async def test_rank_and_base_model_are_refused(vllm: tuple[FakeVllm, OpenAIChatModel],
                                               tmp_path: Path) -> None:
    fake, remote = vllm
    with pytest.raises(AdapterError, match=r"rank 32 but vLLM .* at most 16: restart vLLM with "
                       r"--max-lora-rank 32.*lora_r <= 16"):
        await remote.set_adapter(lora(tmp_path / "v0001", rank=32), "v0001")
    with pytest.raises(AdapterError, match=r"another base model than 'embedded'.*width 64.*"
                       r"answer like the base model"):
        await remote.set_adapter(lora(tmp_path / "v0002", width=64), "v0002")
    assert fake.loads == ["nightowl-v0001"]  # the mismatch was caught before loading
    assert remote.active_adapter is None and fake.loaded == {}


async def test_restart_is_detected_and_adapters_reloaded(vllm: tuple[FakeVllm, OpenAIChatModel],
                                                        tmp_path: Path) -> None:
    fake, remote = vllm
    await remote.set_adapter(lora(tmp_path / "v0001"), "v0001")
    fake.restart()  # quietly: the next request meets a 404 for its name
    assert (await chat(remote))[0] == "[nightowl-v0001] hi"
    assert [c["model"] for c in fake.chats] == ["nightowl-v0001", "nightowl-v0001"]
    assert fake.loads == ["nightowl-v0001"] * 2 and remote.stats()["adapter_reloads"] == 1
    fake.mode = "dead"  # the engine dies; vLLM exits and is started again
    with pytest.raises(ModelError, match="died"):
        await chat(remote)
    fake.restart()
    before = len(fake.chats)
    assert (await chat(remote))[0] == "[nightowl-v0001] hi"
    assert len(fake.chats) == before + 1  # reloaded BEFORE the request: no 404 round trip
    assert fake.loads == ["nightowl-v0001"] * 3 and remote.stats()["adapter_reloads"] == 2


async def test_in_flight_requests_pin_the_old_name(vllm: tuple[FakeVllm, OpenAIChatModel],
                                                   tmp_path: Path) -> None:
    fake, remote = vllm
    await remote.set_adapter(lora(tmp_path / "v0001"), "v0001")
    fake.hold = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> tuple[str, StreamInfo]:
        info = StreamInfo()
        text = ""
        async for d in remote.stream(MSGS, info=info):
            text += d
            started.set()
        return text, info

    task = asyncio.create_task(slow())
    await started.wait()
    await remote.set_adapter(lora(tmp_path / "v0002"), "v0002")  # the promotion
    assert fake.unloads == []  # v0001 still answers a request
    fake.hold.set()
    text, info = await task
    await remote.wait_unloads()
    assert (text, info.adapter) == ("[nightowl-v0001] hi", "v0001")
    assert fake.unloads == ["nightowl-v0001"] and list(fake.loaded) == ["nightowl-v0002"]
    assert (await chat(remote))[0] == "[nightowl-v0002] hi"
    await remote.set_adapter(tmp_path / "v0001", "v0001")  # rollback: the older name again
    assert (await chat(remote))[0] == "[nightowl-v0001] hi" and "nightowl-v0002" in fake.unloads


async def test_extras_are_capped_and_names_never_repointed(
        vllm: tuple[FakeVllm, OpenAIChatModel], tmp_path: Path) -> None:
    fake, remote = vllm
    await remote.set_adapter(lora(tmp_path / "v0001"), "v0001")
    for i in range(2, 7):
        await remote.load_adapter(lora(tmp_path / f"v000{i}"), f"v000{i}")
    # active v0001 + canary v0006 kept; at most 4 loaded, oldest extras unloaded first
    assert fake.unloads == ["nightowl-v0002", "nightowl-v0003"]
    assert sorted(remote.stats()["loaded_adapters"]) == ["v0001", "v0004", "v0005", "v0006"]
    with pytest.raises(AdapterError, match="never re-pointed"):
        await remote.set_adapter(tmp_path / "v0004", "v0001")
    # another process (or this one before a restart) loaded the same name: adopted if same path
    other = OpenAIChatModel(ModelConfig(backend="openai", base_url=fake.base_url, timeout_s=5))
    try:
        await other.set_adapter(tmp_path / "v0001", "v0001")
        assert other.active_adapter == "v0001"
        with pytest.raises(AdapterError, match=r"already serves nightowl-v0004 from"):
            await other.set_adapter(tmp_path / "v0005", "v0004")
    finally:
        await other.aclose()


async def test_an_adapter_lost_for_good_falls_back_to_the_base(
        vllm: tuple[FakeVllm, OpenAIChatModel], tmp_path: Path) -> None:
    import shutil

    fake, remote = vllm
    folder = lora(tmp_path / "v0001")
    await remote.set_adapter(folder, "v0001")
    shutil.rmtree(folder)  # the server cannot load it again after its restart
    fake.restart()
    text, info = await chat(remote)
    assert (text, info.adapter) == ("[embedded] hi", None)  # the bot keeps answering
    assert remote.active_adapter is None  # so the learning service's follower retries it
    with pytest.raises(AdapterError, match="not loaded"):
        await chat(remote, adapter="v0001")
