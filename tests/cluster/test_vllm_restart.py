"""vLLM stopped mid-answer and started again (the session's one restart): clear errors while it is
down, and the adapters it lost are loaded again before the next request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from llm.base import GenParams, StreamInfo
from llm.errors import ModelError
from tests.cluster.conftest import Vllm
from tests.cluster.helpers import answer, ask, backend, served

Q = "What do owls eat at night?"


async def test_restart_reloads_the_active_adapter(vllm: Vllm, loras: dict[str, Path]) -> None:
    streaming, quiet = backend(vllm.base_url), backend(vllm.base_url)
    try:
        await streaming.set_adapter(loras["v0002"], "v0002")
        await quiet.set_adapter(loras["v0003"], "v0003")
        ref_two, _ = await answer(streaming, Q)
        ref_three, _ = await answer(quiet, Q)
        first = asyncio.Event()
        failed: list[BaseException] = []

        async def long_answer() -> None:
            params = GenParams(max_new_tokens=1500, temperature=0.0, ignore_eos=True)
            try:
                async for _ in streaming.stream(ask(Q), params, info=StreamInfo()):
                    first.set()
            except ModelError as exc:
                failed.append(exc)

        task = asyncio.create_task(long_answer())
        await asyncio.wait_for(first.wait(), 300)
        await asyncio.to_thread(vllm.stop)  # SIGTERM to the process group, SIGKILL after 30 s
        await asyncio.wait_for(task, 60)  # never a hang
        assert len(failed) == 1 and "mid-answer" in str(failed[0]), failed
        t0 = time.monotonic()
        with pytest.raises(ModelError, match=r"cannot reach .*Is the server running\?"):
            await answer(streaming, Q)
        assert time.monotonic() - t0 < 10  # retried a few times, then a clear error
        await asyncio.to_thread(vllm.start, "restart")
        assert "nightowl-v0002" not in await served(vllm.base_url)  # lost by the restart
        after_two, info_two = await answer(streaming, Q)  # saw the failure: restores first
        after_three, info_three = await answer(quiet, Q)  # saw nothing: 404, restore, again
        listed = await served(vllm.base_url)
    finally:
        await streaming.aclose()
        await quiet.aclose()
    assert (after_two, info_two.adapter) == (ref_two, "v0002")
    assert (after_three, info_three.adapter) == (ref_three, "v0003")
    assert {"nightowl-v0002", "nightowl-v0003"} <= set(listed)
    assert streaming.stats()["adapter_reloads"] == 1 and quiet.stats()["adapter_reloads"] == 1
