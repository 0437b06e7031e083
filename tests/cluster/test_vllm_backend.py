"""NightOwl's openai backend against the real vLLM: streaming, runtime adapters under versioned
names, hot swap under load, rollback, canary routing, and the errors a user meets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llm.base import BASE, GenParams, StreamInfo
from llm.errors import AdapterError, ModelError
from tests.cluster.conftest import Vllm
from tests.cluster.helpers import GREEDY, answer, ask, backend, served

Q = "What do owls eat at night?"


async def test_streams_a_chat(vllm: Vllm) -> None:
    model = backend(vllm.base_url)
    try:
        info = StreamInfo()
        params = GenParams(max_new_tokens=24, temperature=0.3, seed=1)  # seed is not sent
        deltas = [d async for d in model.stream(ask(Q), params, info=info)]
    finally:
        await model.aclose()
    assert len(deltas) > 1 and "".join(deltas).strip()
    assert info.adapter is None
    assert info.completion_tokens == 24 or info.finish_reason == "stop"
    assert info.prompt_tokens > 10  # the server's own count, from the usage chunk


async def test_adapter_is_served_under_a_versioned_name(vllm: Vllm, loras: dict[str, Path]
                                                        ) -> None:
    model = backend(vllm.base_url)
    try:
        base, _ = await answer(model, Q, adapter=BASE)
        await model.set_adapter(loras["v0001"], "v0001")
        tuned, info = await answer(model, Q)
        listed = await served(vllm.base_url)
    finally:
        await model.aclose()
    assert info.adapter == "v0001" and tuned != base  # the adapter is applied
    entry = listed["nightowl-v0001"]
    assert entry["parent"] == "embedded" and Path(entry["root"]) == loras["v0001"].resolve()


async def test_hot_swap_under_load_loses_no_request(vllm: Vllm, loras: dict[str, Path]) -> None:
    model = backend(vllm.base_url)
    params = GenParams(max_new_tokens=32, temperature=0.0, ignore_eos=True)
    started = [asyncio.Event() for _ in range(6)]

    async def one(i: int) -> StreamInfo:
        info = StreamInfo()
        async for _ in model.stream(ask(f"{Q} ({i})"), params, info=info):
            if i < len(started):
                started[i].set()
        return info

    try:
        await model.set_adapter(loras["v0001"], "v0001")
        old = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 600)
        await model.set_adapter(loras["v0002"], "v0002")  # the promotion, mid-answer
        new = [asyncio.create_task(one(10 + i)) for i in range(3)]
        infos_old = await asyncio.gather(*old)
        infos_new = await asyncio.gather(*new)
        await model.wait_unloads()
        listed = await served(vllm.base_url)
    finally:
        await model.aclose()
    assert [(i.adapter, i.completion_tokens) for i in infos_old] == [("v0001", 32)] * 6
    assert [(i.adapter, i.completion_tokens) for i in infos_new] == [("v0002", 32)] * 3
    assert "nightowl-v0002" in listed and "nightowl-v0001" not in listed  # unloaded once idle


async def test_rollback_selects_the_older_name(vllm: Vllm, loras: dict[str, Path]) -> None:
    model = backend(vllm.base_url)
    try:
        base, _ = await answer(model, Q, adapter=BASE)
        await model.set_adapter(loras["v0001"], "v0001")
        one, _ = await answer(model, Q)
        await model.set_adapter(loras["v0002"], "v0002")
        two, _ = await answer(model, Q)
        await model.set_adapter(loras["v0001"], "v0001")  # rollback: loaded again if unloaded
        back, info = await answer(model, Q)
        await model.set_adapter(None, None)  # rollback to the base model
        plain, info_base = await answer(model, Q)
    finally:
        await model.aclose()
    assert one != two and (back, info.adapter) == (one, "v0001")
    assert (plain, info_base.adapter) == (base, None)


async def test_canary_share_routes_to_the_candidate(vllm: Vllm, loras: dict[str, Path]) -> None:
    # Fresh names: after the earlier tests loaded, unloaded and re-loaded v0001-v0003 on this
    # server, two of them answered identically here (alone they differ). Open finding, see #15.
    model = backend(vllm.base_url, canary_share=0.5)
    try:
        await model.set_adapter(loras["v0011"], "v0011")
        ref_one, _ = await answer(model, Q, adapter="v0011")
        await model.load_adapter(loras["v0013"], "v0013")  # the candidate
        ref_three, _ = await answer(model, Q, adapter="v0013")
        got = [await answer(model, Q) for _ in range(4)]
    finally:
        await model.aclose()
    assert ref_one != ref_three
    assert [i.adapter for _, i in got] == ["v0011", "v0013", "v0011", "v0013"]
    assert [t for t, _ in got] == [ref_one, ref_three, ref_one, ref_three]


async def test_errors_say_what_to_change_and_keep_the_adapter(vllm: Vllm,
                                                              loras: dict[str, Path]) -> None:
    model = backend(vllm.base_url)
    try:
        await model.set_adapter(loras["v0001"], "v0001")
        before, _ = await answer(model, Q)
        with pytest.raises(AdapterError, match=r"rank 32 .*--max-lora-rank 32.*Kept v0001"):
            await model.set_adapter(loras["r32"], "v0032")
        with pytest.raises(AdapterError, match=r"another base model.*reads width 128.*Kept v0001"):
            await model.set_adapter(loras["other"], "v0099")
        long = [{"role": "user", "content": "owl " * 3000}]
        with pytest.raises(ModelError, match=r"context window \(2048 tokens\).*context_length"):
            _ = [d async for d in model.stream(long, GREEDY)]
        after, info = await answer(model, Q)  # still answering on the previous adapter
        listed = await served(vllm.base_url)
    finally:
        await model.aclose()
    assert (after, info.adapter, model.active_adapter) == (before, "v0001", "v0001")
    assert "nightowl-v0032" not in listed and "nightowl-v0099" not in listed
    wrong = backend(vllm.base_url, name="no-such-model")
    try:
        with pytest.raises(ModelError, match=r"does not serve 'no-such-model'.*\[model\] name"):
            _ = [d async for d in wrong.stream(ask(Q), GREEDY)]
    finally:
        await wrong.aclose()
