"""llm.canary: the one canary rule of every backend (local and openai)."""

from __future__ import annotations

from pathlib import Path

from llm.base import StreamInfo
from llm.canary import Canary
from llm.config import ModelConfig
from llm.fake import FakeChatModel
from llm.openai_backend import OpenAIChatModel
from llm.openai_server import OpenAIServer
from tests.unit.test_llm_openai import MSGS, fake_adapter


def test_share_is_spread_deterministically() -> None:
    canary = Canary(0.25)
    assert [canary.pick("v1") for _ in range(4)] == ["v1"] * 4  # no canary yet
    canary.loaded("v2", active="v1")
    assert [canary.pick("v1") for _ in range(8)] == ["v1", "v1", "v1", "v2"] * 2
    third = Canary(1 / 3)  # a share that is not a binary fraction still lands every 3rd time
    third.loaded("v2", active=None)
    assert [third.pick(None) for _ in range(6)] == [None, None, "v2"] * 2


def test_no_share_or_the_active_itself_is_no_canary() -> None:
    off = Canary(0.0)
    off.loaded("v2", active="v1")
    assert {off.pick("v1") for _ in range(5)} == {"v1"}
    same = Canary(0.5)
    same.loaded("v1", active="v1")  # loading the active version again does not make a canary
    assert same.version is None and {same.pick("v1") for _ in range(4)} == {"v1"}


async def test_openai_backend_routes_the_canary_share(tmp_path: Path) -> None:
    fake = FakeChatModel(name="served")
    async with OpenAIServer(fake, "127.0.0.1", 0, adapters_dir=tmp_path / "adapters") as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="served", timeout_s=5, canary_share=0.5))
        try:
            await remote.set_adapter(fake_adapter(tmp_path / "adapters" / "v0001"), "v0001")
            await remote.load_adapter(fake_adapter(tmp_path / "adapters" / "v0002"), "v0002")
            used = []
            for _ in range(4):
                info = StreamInfo()
                _ = [d async for d in remote.stream(MSGS, info=info)]
                used.append(info.adapter)
            assert used == ["v0001", "v0002", "v0001", "v0002"]
            assert [c["adapter"] for c in fake.calls] == used  # the server saw the same
            assert remote.stats()["canary"] == "v0002"
        finally:
            await remote.aclose()
