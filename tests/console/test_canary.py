"""Setting the canary from the Training page: confirmation, the model's routing, the audit rows,
refused input, and the choice surviving a restart (the store's kv row, over the config default)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bot.console.canary import KV_KEY
from bot.console.server import build_app
from bot.core import Core
from llm.base import CanaryState, StreamInfo
from llm.fake import FakeChatModel
from tests.console.conftest import Env, storage
from training.registry import Registry
from training.service import LearningService

ASK = [{"role": "user", "content": "hello"}]


async def _active_and_candidate(env: Env) -> None:
    """v0001 promoted (active), v0002 waiting for approval (a candidate)."""
    env.trainer.release.set()
    for outcome in ("promoted", "waiting"):
        env.trainer.outcome = outcome
        await env.post("/training/train", confirm="yes")
        assert env.state.training is not None
        await env.state.training
    assert env.model.active_adapter == "v0001"


async def _answered_by(model: FakeChatModel, n: int) -> list[str | None]:
    used = []
    for _ in range(n):
        info = StreamInfo()
        _ = [d async for d in model.stream(ASK, info=info)]
        used.append(info.adapter)
    return used


async def test_set_canary_asks_then_routes_the_share_and_is_audited(env: Env) -> None:
    await env.login()
    await _active_and_candidate(env)
    html = await (await env.client.get("/training")).text()
    assert 'id="canary-form"' in html and "Canary: none (off)." in html

    ask = await env.post("/training/canary", version="v0002", share="0.5")
    assert "Let v0002 answer 50% of the chats for the active adapter (v0001)?" in await ask.text()
    assert env.model.canary == CanaryState(None, 0.0)  # nothing changed before the confirmation
    assert await env.store.kv_get(KV_KEY) is None

    done = await env.post("/training/canary", version="v0002", share="0.5", confirm="yes")
    assert "Canary: v0002 answers 50% of the chats for the active adapter (v0001)." in \
        await done.text()
    assert env.model.canary == CanaryState("v0002", 0.5)
    assert await _answered_by(env.model, 4) == ["v0001", "v0002", "v0001", "v0002"]
    (row,) = await env.audit("canary")
    assert row.allowed and row.platform == "console" and row.actor == "admin"
    assert row.args == "v0002 0.5" and "v0002 answers 50%" in row.result
    overview = await (await env.client.get("/")).text()
    assert "v0002 answers 50% of the chats" in overview

    stop = await env.post("/training/canary", share="0", confirm="yes")
    assert "v0002 is loaded as the canary but answers no chats" in await stop.text()
    assert set(await _answered_by(env.model, 3)) == {"v0001"}


async def test_bad_canary_input_is_refused_changes_nothing_and_is_audited(env: Env) -> None:
    await env.login()
    await _active_and_candidate(env)
    await env.post("/training/canary", version="v0002", share="0.25", confirm="yes")
    for share in ("1.5", "-0.1", "abc", "nan", "", "inf"):
        resp = await env.post("/training/canary", version="v0002", share=share, confirm="yes")
        assert "Not changed: the canary share must be a number from 0 to 1" in \
            await resp.text(), share
    for version, why in (("v0001", "is the active adapter"), ("v0099", "does not exist"),
                         ("../x", "is not an adapter version")):
        resp = await env.post("/training/canary", version=version, share="0.5", confirm="yes")
        assert why in await resp.text(), version
    assert env.model.canary == CanaryState("v0002", 0.25)
    refused = [a for a in await env.audit("canary") if not a.allowed]
    assert len(refused) == 9 and all(a.result.startswith("refused:") for a in refused)
    assert '"share": 0.25' in (await env.store.kv_get(KV_KEY) or "")


async def test_the_canary_chosen_in_the_console_survives_a_restart(env: Env) -> None:
    await env.login()
    await _active_and_candidate(env)
    await env.post("/training/canary", version="v0002", share="0.5", confirm="yes")
    assert env.cfg.model.canary_share == 0.0  # the config default the stored share replaces

    model = FakeChatModel()  # the next start: a fresh model, the same store and storage dir
    await model.set_adapter(Registry(storage(env.cfg)).path("v0001"), "v0001")
    core = Core(env.cfg, env.store, model, None, LearningService(env.cfg, env.store, model))
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(core, env.cfg)))
    await client.start_server()
    try:
        assert model.canary == CanaryState("v0002", 0.5)
        assert await _answered_by(model, 2) == ["v0001", "v0002"]
    finally:
        await client.close()
        await core.wait_background()
