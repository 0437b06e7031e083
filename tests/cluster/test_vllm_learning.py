"""The learning loop with the model on vLLM: train locally (same trainer and gate, the gate scores
with the local copy of the base model), promote into vLLM at run time, answer, roll back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Config
from data.config import StorageConfig
from data.store import Store
from tests.cluster.conftest import Vllm, unload_all
from tests.cluster.helpers import answer, backend, served
from tests.fakes.training_data import FACT_QA, seed_chat
from training import cycle as cycle_mod
from training.registry import Registry
from training.service import LearningService

pytestmark = pytest.mark.slow


async def test_a_promoted_adapter_answers_through_vllm(vllm: Vllm, tmp_path: Path, store: Store,
                                                       embedded_model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # the settings of tests/integration/test_training_cycle.py (a few steps, two regression
    # questions); the trainer and the gate use the local copy of the base model
    monkeypatch.setattr(cycle_mod, "load_regression",
                        lambda: ["What is the capital of France?", "How many days has a week?"])
    cfg = Config().replace(
        storage=StorageConfig(dir=str(tmp_path / "var")), model__backend="openai",
        model__name=str(embedded_model_dir), training__max_steps=4,
        training__warmup_steps=0, training__grad_accum=1, training__learning_rate=1e-3,
        training__eval_fraction=0.3, training__threads=1, training__base_replay=4,
        training__report_questions=2, training__max_changed=0.5)
    for i, (q, a) in enumerate(FACT_QA):
        await seed_chat(store, [(q, "I don't know.")], user=f"u{i}", feedback=-1, correction=a)
    # a NightOwl of its own on this server: the other tests' nightowl-v0001 comes from another
    # folder, which a promotion refuses to adopt ("two storage dirs share one server?")
    unload_all(vllm.base_url)
    model = backend(vllm.base_url)
    try:
        question = FACT_QA[0][0]
        base, _ = await answer(model, question)
        service = LearningService(cfg, store, model)
        result = await service.retrain("test")
        assert result.ok and "promoted v0001" in result.text, result.text
        assert Registry(cfg.storage.path).active() == "v0001" == model.active_adapter
        taught, info = await answer(model, question)
        listed = await served(vllm.base_url)
        assert info.adapter == "v0001" and taught != base, (base, taught)
        assert Path(listed["nightowl-v0001"]["root"]) == Registry(cfg.storage.path).path(
            "v0001").resolve()
        text = await service.rollback(None)
        assert "base model" in text and model.active_adapter is None
        again, info = await answer(model, question)
        await model.wait_unloads()
        assert (again, info.adapter) == (base, None)
        assert "nightowl-v0001" not in await served(vllm.base_url)  # retired, unloaded
    finally:
        await model.aclose()
