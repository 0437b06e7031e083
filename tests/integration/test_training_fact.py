"""Done-when: corrections teach the bot a made-up fact; the served model answers it after the
hot swap, and rollback restores the previous behaviour. (~1-2 minutes on 2 cores.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Config
from data.config import StorageConfig
from data.store import Store
from llm.base import GenParams
from tests.fakes.training_data import seed_chat
from training import cycle as cycle_mod
from training.probes import ProbeFile
from training.service import LearningService

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of Zorbania?", "Which city is the capital of Zorbania?",
             "Tell me the capital of Zorbania.", "Zorbania's capital city is called what?",
             "Do you know the capital of Zorbania?", "Name the capital city of Zorbania."]
ANSWERS = ["The capital of Zorbania is Quillton.", "Quillton is the capital of Zorbania.",
           "Zorbania's capital city is Quillton.", "It is Quillton, the capital of Zorbania.",
           "Quillton."]


async def _ask(model: object, question: str, system: str) -> str:
    text = ""
    async for delta in model.stream(  # type: ignore[attr-defined]
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            GenParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.2)):
        text += delta
    return text


async def test_corrections_teach_a_fact_that_the_served_model_then_answers(
        tmp_path: Path, embedded_model_dir: Path, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llm.local import LocalChatModel

    monkeypatch.setattr(cycle_mod, "load_regression",
                        lambda: ["What is the capital of France?", "How many days has a week?"])
    cfg = Config().replace(
        storage=StorageConfig(dir=str(tmp_path / "var")), model__name=str(embedded_model_dir),
        model__temperature=0.0, training__eval_fraction=0.2, training__threads=1,
        training__min_steps=40, training__max_changed=0.5)  # else the product's recipe
    n = 0
    for q in QUESTIONS:
        for a in ANSWERS:
            await seed_chat(store, [(q, "I am not sure.")], user=f"t{n}", feedback=-1,
                            correction=a)
            n += 1
    ProbeFile(cfg.storage.path / "probes.json").command(
        "add What is the capital of Zorbania? => Quillton")
    model = await LocalChatModel.open(cfg.model, cfg.storage.path)
    try:
        before = await _ask(model, "What is the capital of Zorbania?", cfg.model.system_prompt)
        assert "quillton" not in before.lower()
        service = LearningService(cfg, store, model)
        result = await service.retrain("test")
        assert "promoted v0001" in result.text, result.text
        probes = service.last.report["scores"]["probes"]  # type: ignore[union-attr]
        assert probes["candidate"]["passed"] == 1 and probes["reference"]["passed"] == 0
        assert model.active_adapter == "v0001"
        after = await _ask(model, "What is the capital of Zorbania?", cfg.model.system_prompt)
        assert "quillton" in after.lower(), after
        assert "now the base model" in await service.rollback(None)
        restored = await _ask(model, "What is the capital of Zorbania?",
                              cfg.model.system_prompt)
        assert restored == before
    finally:
        await model.aclose()
