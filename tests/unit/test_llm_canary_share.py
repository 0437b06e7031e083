"""``set_canary_share`` on the OpenAI backend (against NightOwl's own server over loopback) and
on the fake: the share changes at run time, a share outside 0..1 is refused and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm.base import CanaryState, StreamInfo
from llm.canary import Canary
from llm.config import ModelConfig
from llm.errors import ModelError
from llm.fake import FakeChatModel
from llm.openai_backend import OpenAIChatModel
from llm.openai_server import OpenAIServer
from tests.unit.test_llm_openai import MSGS, fake_adapter

BAD = (1.5, -0.01, float("nan"), float("inf"))


async def _used(model: OpenAIChatModel | FakeChatModel, n: int) -> list[str | None]:
    out = []
    for _ in range(n):
        info = StreamInfo()
        _ = [d async for d in model.stream(MSGS, info=info)]
        out.append(info.adapter)
    return out


async def test_openai_backend_changes_the_share_at_run_time(tmp_path: Path) -> None:
    fake = FakeChatModel(name="served")
    async with OpenAIServer(fake, "127.0.0.1", 0, adapters_dir=tmp_path / "adapters") as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="served", timeout_s=5))
        try:
            await remote.set_adapter(fake_adapter(tmp_path / "adapters" / "v0001"), "v0001")
            await remote.load_adapter(fake_adapter(tmp_path / "adapters" / "v0002"), "v0002")
            assert await _used(remote, 2) == ["v0001", "v0001"]  # config share 0
            await remote.set_canary_share(0.5)
            assert await _used(remote, 4) == ["v0001", "v0002", "v0001", "v0002"]
            assert remote.canary == CanaryState("v0002", 0.5)
            assert remote.stats()["canary_share"] == 0.5
            for bad in BAD:
                with pytest.raises(ModelError, match="from 0 to 1"):
                    await remote.set_canary_share(bad)
            assert remote.canary.share == 0.5
        finally:
            await remote.aclose()


async def test_fake_follows_the_same_rule(tmp_path: Path) -> None:
    model = FakeChatModel()
    await model.set_adapter(fake_adapter(tmp_path / "v1"), "v1")
    await model.load_adapter(fake_adapter(tmp_path / "v2"), "v2")
    await model.set_canary_share(0.25)
    assert await _used(model, 4) == ["v1", "v1", "v1", "v2"]
    for bad in BAD:
        with pytest.raises(ModelError):
            await model.set_canary_share(bad)
    assert model.canary == CanaryState("v2", 0.25)


def test_a_config_share_outside_the_range_is_refused_too() -> None:
    with pytest.raises(ModelError, match="from 0 to 1"):
        Canary(2.0)
