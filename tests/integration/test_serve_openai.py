"""``nightowl serve-openai`` as shipped: key from the environment, bind refusal, the ACTIVE
adapter served and followed; one test on the real tiny model for the engine's label rule."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx
import pytest

from bot.cli import main
from bot.cli.ops import serve_settings, serving
from bot.config import Config
from llm.base import GenParams
from llm.errors import AdapterError, ModelError
from tests.unit.test_llm_openai import MSGS, fake_adapter
from training.registry import Registry

FAST = {"follow_active_s": 0.05}


def args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"host": None, "port": 0, "api_key_env": None, **kw})


class Said:
    """``say`` for the command: records lines; ``wait_for(text)`` waits on an event."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, text: str) -> None:
        self.lines.append(text)
        self._changed.set()

    async def wait_for(self, text: str) -> None:
        async def seen() -> None:
            while not any(text in line for line in self.lines):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(seen(), 10)


def registry_with(cfg: Config, *versions: str) -> Registry:
    registry = Registry(cfg.storage.path)
    for v in versions:
        fake_adapter(registry.path(v))
    return registry


async def fingerprint(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    r = await client.post("/chat/completions", json={"messages": MSGS, "max_tokens": 2},
                          headers=headers or {})
    assert r.status_code == 200, r.text
    return str(r.json()["system_fingerprint"])


async def test_serves_the_active_adapter_and_follows_promotions_and_rollbacks(
        cfg: Config) -> None:
    registry = registry_with(cfg, "v0001", "v0002")
    registry.set_active("v0001")
    said = Said()
    settings = serve_settings(args(), cfg.replace(serve__follow_active_s=0.05))
    async with serving(cfg, settings, say=said) as server:
        assert server.model.active_adapter == "v0001"  # loaded before the first request
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert await fingerprint(client) == "nightowl-v0001"
            registry.set_active("v0002")  # `nightowl train` promoted in another process
            await said.wait_for("Serving adapter v0002")
            assert await fingerprint(client) == "nightowl-v0002"
            registry.rollback("v0001")  # `nightowl rollback v0001`
            await said.wait_for("Serving adapter v0001 (ACTIVE; was v0002)")
            assert await fingerprint(client) == "nightowl-v0001"
            registry.set_active(None)
            await said.wait_for("Serving adapter base")
            assert await fingerprint(client) == "nightowl-base"


async def test_a_broken_active_adapter_keeps_the_current_one(cfg: Config) -> None:
    registry = registry_with(cfg, "v0001", "v0002")
    registry.set_active("v0001")
    said = Said()
    settings = serve_settings(args(), cfg.replace(serve__follow_active_s=0.05))
    async with serving(cfg, settings, say=said) as server:
        (registry.path("v0002") / "adapter_config.json").write_text("{broken")
        registry.pointer.write_text("v0002\n")  # ACTIVE now names a corrupt folder
        await said.wait_for("Adapter v0002 cannot be loaded; still serving v0001")
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert await fingerprint(client) == "nightowl-v0001"
        assert sum("v0002 cannot be loaded" in line for line in said.lines) == 1  # said once


async def test_api_key_comes_from_the_environment(cfg: Config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTOWL_API_KEY", "from-the-env-1234")
    monkeypatch.setenv("OTHER_KEY", "other-key-5678")
    for ns, key in ((args(), "from-the-env-1234"), (args(api_key_env="OTHER_KEY"),
                                                     "other-key-5678")):
        async with serving(cfg, serve_settings(ns, cfg), say=Said()) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                assert (await client.get("/models")).status_code == 401
                r = await client.post("/chat/completions", json={"messages": MSGS})
                assert r.status_code == 401
                ok = await client.get("/models", headers={"Authorization": f"Bearer {key}"})
                assert ok.status_code == 200


async def test_config_names_the_key_variable(cfg: Config,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIGURED_KEY", "configured-9876")
    cfg = cfg.replace(serve__api_key_env="CONFIGURED_KEY")
    async with serving(cfg, serve_settings(args(), cfg), say=Said()) as server:
        assert server.api_key == "configured-9876"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
async def test_non_loopback_without_a_key_is_refused_before_loading(
        cfg: Config, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv("NIGHTOWL_API_KEY", raising=False)
    said = Said()
    with pytest.raises(ModelError, match="without an API key: anyone who can reach"):
        async with serving(cfg, serve_settings(args(host=host), cfg), say=said):
            pass
    assert said.lines == []  # refused before the model was opened


def test_cli_refuses_a_public_bind_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NIGHTOWL_API_KEY", raising=False)
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndir = "{tmp_path / "var"}"\n[model]\nbackend = "fake"\n')
    assert main(["--config", str(p), "serve-openai", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "nightowl: error: refusing to serve on 0.0.0.0 without an API key" in err
    assert "NIGHTOWL_API_KEY" in err and "--api-key-env" in err


def test_secret_is_redacted_from_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTOWL_API_KEY", "redact-me-please")
    assert "redact-me-please" in Config().secret_values()


async def test_registry_adapter_loads_over_http(cfg: Config) -> None:
    registry = registry_with(cfg, "v0001", "v0002")
    async with serving(cfg, serve_settings(args(), cfg), say=Said()) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            r = await client.post("/load_lora_adapter", json={
                "lora_name": "v0002", "lora_path": str(registry.path("v0002"))})
            assert r.status_code == 200
            r = await client.post("/chat/completions", json={"messages": MSGS,
                                                             "model": "v0002"})
            assert r.json()["system_fingerprint"] == "nightowl-v0002"
            r = await client.post("/load_lora_adapter", json={
                "lora_name": "v0002", "lora_path": str(registry.path("v0001"))})
            assert r.status_code == 409


def two_adapters(base_dir: Path, out: Path) -> tuple[Path, Path]:
    """A tiny random LoRA for the real model, and a copy with other weights (sign flipped)."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    one, two = out / "one", out / "two"
    peft_model.save_pretrained(str(one))
    shutil.copytree(one, two)
    weights = two / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: -v if "lora_B" in k else v for k, v in tensors.items()}, str(weights))
    return one, two


@pytest.mark.slow
async def test_engine_never_repoints_a_loaded_label(embedded_model_dir: Path,
                                                    tmp_path: Path) -> None:
    """The real engine (peft): a loaded label keeps its weights, whoever asks."""
    from llm.config import ModelConfig
    from llm.local import LocalChatModel
    from tests.conftest import TEST_CACHE

    one, two = await asyncio.to_thread(two_adapters, embedded_model_dir, tmp_path)
    model = LocalChatModel(ModelConfig(dtype="float32", threads=1, context_length=256),
                           TEST_CACHE, say=lambda s: None)
    await asyncio.to_thread(model.load)
    try:
        p = GenParams(max_new_tokens=6, temperature=0.0)
        await model.load_adapter(two, "v0002")
        by_two = "".join([d async for d in model.stream(MSGS, p, adapter="v0002")])
        await model.set_adapter(one, "v0001")
        before = "".join([d async for d in model.stream(MSGS, p)])
        assert before != by_two  # the two folders answer differently
        for load in (model.load_adapter, model.set_adapter):
            with pytest.raises(AdapterError, match="never re-pointed"):
                await load(two, "v0001")
        assert model.active_adapter == "v0001"
        assert "".join([d async for d in model.stream(MSGS, p, adapter="v0001")]) == before
        assert "".join([d async for d in model.stream(MSGS, p)]) == before
        assert model.stats()["loaded_adapters"] == ["v0001", "v0002"]
    finally:
        await model.aclose()
