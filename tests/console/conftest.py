"""The console on real services: a real store, the fake model, the real LearningService whose
child training is replaced by :class:`FakeTrainer`, and the real knowledge base (Chroma) on the
hashing embedder when a test asks for it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.config import Config
from bot.console.app import STATE, ConsoleState
from bot.console.auth import PasswordFile
from bot.console.server import build_app
from bot.core import Core
from data.store import Store
from llm.fake import FakeChatModel
from tests.fakes.training_data import write_adapter_files
from training import service as service_mod
from training.cycle import CycleResult
from training.registry import Registry
from training.service import LearningService

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class FakeTrainer:
    """Stands in for ``run_cycle`` (the child that trains): records the run as the real cycle
    does — a ``running`` row at once, then, when released, an adapter folder with ``meta.json``
    (loss curve, gate scores, speed, memory), ACTIVE moved on promotion, the finished row."""

    def __init__(self, outcome: str = "promoted") -> None:
        self.outcome = outcome  # promoted | waiting | rejected
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, cfg: Config, store: Store, *, trigger: str, model: Any,
                       say: Any, guard: Any = None) -> CycleResult:
        self.calls.append(trigger)
        registry = Registry(cfg.storage.path)
        parent = registry.active()
        run_id = await store.start_run(trigger)
        self.started.set()
        await self.release.wait()
        scores = {"heldout": {"candidate": {"loss": 1.12, "accuracy": 0.61},
                              "reference": {"loss": 1.48, "accuracy": 0.52}},
                  "probes": {"candidate": {"total": 2, "passed": 2},
                             "reference": {"total": 2, "passed": 1}},
                  "regression": {"candidate": {"loss": 2.01}, "base": {"loss": 2.0}},
                  "recent": {"total": 1, "rows": [{"question": "How do I retrain?",
                                                   "reference": "No idea.",
                                                   "candidate": "Send /retrain.",
                                                   "changed": True}]}}
        training = {"steps": 6, "samples_per_s": 1.7, "peak_rss_mb": 3400.0,
                    "train_runtime_s": 42.0, "train_loss": 1.3, "backend": "fake"}
        reasons = ["held-out loss 1.12 < 1.48"]
        meta = {"status": self.outcome, "parent": parent, "run_id": run_id, "examples": 8,
                "loss_curve": [[1, 2.4], [2, 1.9], [3, 1.6], [4, 1.4], [5, 1.3], [6, 1.2]],
                "scores": scores, "reasons": reasons, **training}
        version = registry.register(write_adapter_files(registry.staging_dir()), meta)
        if self.outcome == "promoted":
            await model.set_adapter(registry.path(version), version)
            registry.set_active(version)
        summary = f"{self.outcome} {version} (parent {parent or 'base'})"
        report = {"dataset": {"kept": 8, "new": 8, "train": 7, "eval": 1,
                              "dropped": {"thumbs_down": 2}},
                  "training": training, "scores": scores,
                  "decision": {"promote": self.outcome != "rejected", "reasons": reasons}}
        await store.finish_run(run_id, "rejected" if self.outcome == "waiting" else self.outcome,
                               version=version, parent=parent, summary=summary, report=report)
        return CycleResult(self.outcome, run_id, summary, version=version, parent=parent,
                           reasons=reasons, report=report)


@dataclass
class Env:
    cfg: Config
    store: Store
    model: FakeChatModel
    core: Core
    learning: LearningService
    trainer: FakeTrainer
    client: TestClient[Any, Any]

    @property
    def state(self) -> ConsoleState:
        return self.client.app[STATE]  # type: ignore[index]

    async def login(self, name: str = "admin", password: str = PASSWORD) -> Any:
        page = await (await self.client.get("/login")).text()
        return await self.client.post("/login", data={
            "name": name, "password": password, "csrf": csrf_of(page), "next": "/"})

    async def csrf(self, path: str = "/") -> str:
        return csrf_of(await (await self.client.get(path)).text())

    async def post(self, path: str, **data: Any) -> Any:
        if "csrf" not in data:
            data["csrf"] = await self.csrf()
        return await self.client.post(path, data=data)

    async def audit(self, action: str) -> list[Any]:
        return [a for a in await self.store.audit_log(500) if a.action == action]


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def console_cfg(cfg: Config, **console: Any) -> Config:
    keys = {f"console__{k}": v for k, v in {"login_fail_delay_s": 0.05, **console}.items()}
    return cfg.replace(**keys)


async def make_env(cfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch,
                   knowledge: Any = None, outcome: str = "promoted") -> AsyncIterator[Env]:
    trainer = FakeTrainer(outcome)
    monkeypatch.setattr(service_mod, "run_cycle", trainer)
    model = FakeChatModel()
    learning = LearningService(cfg, store, model)
    core = Core(cfg, store, model, knowledge, learning)
    PasswordFile(cfg.storage.path, rounds=4).set("admin", PASSWORD)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(core, cfg)))
    await client.start_server()
    try:
        yield Env(cfg, store, model, core, learning, trainer, client)
    finally:
        trainer.release.set()
        await client.close()
        await core.wait_background()


@pytest.fixture
async def env(cfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    async for e in make_env(console_cfg(cfg), store, monkeypatch):
        yield e


@pytest.fixture
async def kb_env(cfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Env]:
    """With the real knowledge base (Chroma) on the hashing embedder."""
    from rag.fake import HashEmbedder
    from rag.knowledge import open_knowledge

    kcfg = console_cfg(cfg.replace(rag__max_file_mb=0.01, rag__min_score=0.0))
    kb = await open_knowledge(kcfg, store, HashEmbedder())
    try:
        async for e in make_env(kcfg, store, monkeypatch, knowledge=kb):
            yield e
    finally:
        await kb.aclose()


def storage(cfg: Config) -> Path:
    return cfg.storage.path
