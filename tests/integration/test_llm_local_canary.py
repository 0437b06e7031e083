"""The local engine's canary at run time: ``set_canary_share`` on the real tiny model with two
real LoRA adapters. The canary's answers are the candidate adapter's own answers (the same text
as asking for it by name), in exactly the share set."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm.base import CanaryState, GenParams
from llm.errors import ModelError
from tests.integration.test_llm_local import adapters, make_model, run  # noqa: F401

SHORT = GenParams(max_new_tokens=4, temperature=0.0)


async def test_set_canary_share_routes_that_share_to_the_candidate(
        embedded_model_dir: Path, adapters: dict[str, Path]) -> None:  # noqa: F811
    model = next(make_model(embedded_model_dir, canary_share=0.0))
    try:
        await model.set_adapter(adapters["vA"], "vA")
        await model.load_adapter(adapters["vB"], "vB")  # how the console loads a candidate
        own = {v: (await run(model, "Hi owl", SHORT, adapter=v))[0] for v in ("vA", "vB")}
        assert own["vA"] != own["vB"]  # the two adapters answer differently
        assert model.canary == CanaryState("vB", 0.0)
        off = [(await run(model, "Hi owl", SHORT))[1].adapter for _ in range(3)]
        assert off == ["vA"] * 3  # share 0: the canary is loaded but answers nothing

        await model.set_canary_share(0.5)
        answers = [await run(model, "Hi owl", SHORT) for _ in range(4)]
        assert [info.adapter for _, info in answers] == ["vA", "vB", "vA", "vB"]
        assert [text for text, _ in answers] == [own["vA"], own["vB"]] * 2
        assert model.canary == CanaryState("vB", 0.5)
        assert model.stats()["canary_share"] == 0.5

        for bad in (1.5, -0.1, float("nan")):
            with pytest.raises(ModelError, match="from 0 to 1"):
                await model.set_canary_share(bad)
        assert model.canary.share == 0.5  # a refused share changes nothing

        await model.set_canary_share(1.0)
        assert {(await run(model, "Hi owl", SHORT))[1].adapter for _ in range(3)} == {"vB"}
    finally:
        await model.aclose()
