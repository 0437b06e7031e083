"""LearningService and the nightly scheduler with a fake cycle (no model, fast)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from data.store import Store
from llm.fake import FakeChatModel
from tests.fakes.training_data import write_adapter_files
from training import service as service_mod
from training.errors import TrainingError
from training.outcome import CycleResult
from training.registry import Registry
from training.scheduler import LAST_RUN_KEY, NightlyScheduler, cron_trigger
from training.service import LearningService


class SlowCycle:
    """Stands in for run_cycle: blocks until released, counts calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, cfg: Config, store: Any, *, trigger: str, model: Any,
                       say: Any, guard: Any = None) -> CycleResult:
        self.calls.append(trigger)
        self.started.set()
        await self.release.wait()
        return CycleResult("skipped", len(self.calls), "skipped: test")


def _adapter(reg: Registry, status: str = "promoted") -> str:
    return reg.register(write_adapter_files(reg.staging_dir()), {"status": status})


async def test_retrain_is_single_flight_with_the_scheduler(
        cfg: Config, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SlowCycle()
    monkeypatch.setattr(service_mod, "run_cycle", fake)
    svc = LearningService(cfg, store, FakeChatModel())
    first = asyncio.create_task(svc.retrain("admin"))
    await fake.started.wait()
    assert svc.running
    busy = await svc.retrain("admin")
    assert not busy.ok and "already in progress" in busy.text
    sched = NightlyScheduler(cfg, svc)
    assert await sched.fire() is None and sched.skipped == 1
    fake.release.set()
    result = await first
    assert "skipped: test" in result.text and not svc.running
    assert fake.calls == ["admin"]
    assert "last run #1 skipped" in svc.status_line()


async def test_scheduler_job_settings_and_catch_up(cfg: Config, store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SlowCycle()
    fake.release.set()
    monkeypatch.setattr(service_mod, "run_cycle", fake)
    svc = LearningService(cfg, store, FakeChatModel())
    notes: list[str] = []

    async def notify(text: str, files: list[Path]) -> None:
        notes.append(text)
    every_minute = cfg.replace(training__schedule="* * * * *", training__timezone="UTC")
    async with NightlyScheduler(every_minute, svc, notify=notify) as sched:
        job = sched.scheduler.get_job("nightowl-nightly-training")
        assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time == 3600
        assert sched.next_run_time is not None
        assert sched.catch_up is not None  # the missed run (no last run recorded) is caught up
        await sched.catch_up
    assert fake.calls == ["schedule"] and "skipped: test" in notes[0]
    assert await store.kv_get(LAST_RUN_KEY) is not None
    # a run recorded after the last fire time is not repeated: no catch-up run is started
    last = float(await store.kv_get(LAST_RUN_KEY) or 0)
    await store.kv_set(LAST_RUN_KEY, str(last + 120))
    async with NightlyScheduler(every_minute, svc, notify=notify) as again:
        assert again.catch_up is None
    assert fake.calls == ["schedule"]


def test_bad_schedule_or_timezone_is_a_config_error(cfg: Config) -> None:
    with pytest.raises(TrainingError, match="schedule"):
        cron_trigger(cfg.replace(training__schedule="every night"))
    with pytest.raises(TrainingError, match="timezone"):
        cron_trigger(cfg.replace(training__timezone="Mars/Olympus"))


async def test_rollback_hot_swaps_and_refuses_corrupt(cfg: Config, store: Store) -> None:
    reg = Registry(cfg.storage.path)
    v1, v2 = _adapter(reg), _adapter(reg)
    reg.set_active(v2)
    model = FakeChatModel()
    svc = LearningService(cfg, store, model)
    assert await svc.activate_on_start() == v2 and model.active_adapter == v2
    text = await svc.rollback(None)
    assert "now v0001" in text and model.active_adapter == v1 and reg.active() == v1
    (reg.path(v2) / "adapter_config.json").unlink()
    text = await svc.rollback(v2)
    assert text.startswith("Rollback refused") and model.active_adapter == v1
    assert reg.active() == v1
    assert "* v0001" in svc.adapters_text()
    assert "Added probe #1" in svc.probe("add Q? => A")


async def test_start_with_corrupt_active_keeps_base_and_fails_stale_runs(
        cfg: Config, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(cfg.storage.path)
    v1 = _adapter(reg)
    reg.set_active(v1)
    (reg.path(v1) / "adapter_model.safetensors").unlink()
    run_id = await store.start_run("schedule")  # left 'running' by a crashed process
    model = FakeChatModel()
    with caplog.at_level(logging.ERROR, logger="nightowl.training"):
        assert await LearningService(cfg, store, model).activate_on_start() is None
    assert model.active_adapter is None
    assert "base model" in caplog.text
    runs = await store.runs()
    assert runs[0].id == run_id and runs[0].status == "failed"


async def test_sync_active_follows_a_pointer_moved_by_another_process(cfg: Config,
                                                                      store: Store) -> None:
    model = FakeChatModel()
    svc = LearningService(cfg, store, model)
    reg = Registry(cfg.storage.path)
    v1 = _adapter(reg)
    assert await svc.sync_active() is None  # nothing active yet: nothing to do
    reg.set_active(v1)  # what `nightowl train` / `nightowl rollback` in another process does
    assert await svc.sync_active() == v1 and model.active_adapter == v1
    assert await svc.sync_active() is None  # already in sync
    v2 = _adapter(reg)
    reg.set_active(v2)
    (reg.path(v2) / "adapter_config.json").unlink()  # corrupt: refused, v1 kept
    assert await svc.sync_active() is None and model.active_adapter == v1


async def test_a_waiting_candidate_is_rejected_or_approved_by_an_admin(
        cfg: Config, store: Store) -> None:
    model = FakeChatModel()
    svc = LearningService(cfg, store, model)
    assert svc.waiting_candidate() is None
    assert "No candidate is waiting" in await svc.reject_candidate("admin:a")
    run_id = await store.start_run("test")
    await store.finish_run(run_id, "rejected", version="v0001", summary="waits",
                           report={"scores": {"x": 1}})
    reg = svc.registry
    version = reg.register(write_adapter_files(reg.staging_dir()),
                           {"status": "waiting", "run_id": run_id, "examples": 5,
                            "reasons": ["held-out loss improved 2.0 -> 1.0"]})
    text = svc.waiting_candidate()
    assert text is not None and version in text and "5 examples" in text
    assert "stays active" in await svc.reject_candidate("admin:bob")
    assert reg.meta(version)["status"] == "rejected" and reg.active() is None
    assert reg.meta(version)["rejected_by"] == "admin:bob" and model.active_adapter is None
    run = (await store.runs())[0]
    assert run.status == "rejected" and "by admin:bob" in run.summary
    assert run.report == {"scores": {"x": 1}}
    assert svc.waiting_candidate() is None


async def test_forget_purges_preference_rows_and_sampled_questions(cfg: Config,
                                                                   store: Store) -> None:
    import json

    run = cfg.storage.path / "runs" / "r1"
    (run / "job").mkdir(parents=True)
    secret, other = "my secret question?", "a public question?"
    prefs = [{"prompt": [{"role": "user", "content": q}],
              "completion": [{"role": "assistant", "content": "x"}], "label": True}
             for q in (secret, other)]
    (run / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    (run / "job" / "job.json").write_text(json.dumps({"report_questions": [secret, other]}))
    rows = [{"question": q, "reference": "a", "candidate": "b"} for q in (secret, other)]
    (run / "report.json").write_text(json.dumps({"scores": {"recent": {"rows": rows}}}))
    meta = cfg.storage.path / "adapters" / "v0001" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"scores": {"recent": {"rows": rows}}}))
    run_id = await store.start_run("test")
    await store.finish_run(run_id, "rejected", report={"scores": {"recent": {"rows": rows}}})
    svc = LearningService(cfg, store, None)
    assert await svc.purge_texts([secret]) == 5
    blob = "".join(p.read_text() for p in [*run.rglob("*.json*"), meta])
    assert secret not in blob and other in blob
    stored = json.dumps((await store.runs(1))[0].report)
    assert secret not in stored and other in stored
