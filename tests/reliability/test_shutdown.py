"""SIGTERM of the real ``nightowl run`` process (issue #19 item 8): it stops within 10 s even
mid-answer and mid-training; the question stays pending and is answered once after the restart;
the training child is stopped and the run is marked as stopped, not left running."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import pytest

from data.store import Store
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.training_data import FACT_QA, seed_chat
from tests.reliability.test_process import (
    answered,
    fake,
    rows,
    start,
    stop,
    wait_until,
    write_config,
)
from tests.reliability.test_training_child import _alive

pytestmark = pytest.mark.slow
__all__ = ["fake"]  # the fixture

STOP_LIMIT_S = 10.0


async def _sigterm(proc: asyncio.subprocess.Process) -> float:
    """Send SIGTERM; the seconds until the process exited (fails after STOP_LIMIT_S + 20)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_LIMIT_S + 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("nightowl run did not stop within 30 s of SIGTERM") from None
    return time.monotonic() - t0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _trainers(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"training.sft" in cmd:
            found.append(child)
    return found


async def test_sigterm_mid_answer_stops_in_10_s_and_the_question_is_answered_after_restart(
        tmp_path: Path, fake: FakeTelegramAPI, embedded_model_dir: Path) -> None:
    shutil.copytree(embedded_model_dir, tmp_path / "var" / "models" / embedded_model_dir.name)
    # a long greedy answer (minutes at this model's speed): without the grace period the
    # shutdown would wait for all of it
    cfg = write_config(tmp_path, fake, "max_new_tokens = 3000\ntemperature = 0.0",
                       extra="[chat]\nshutdown_grace_s = 2.0\n")
    log = tmp_path / "run.log"
    user = fake.user(5101)
    chat = fake.private(user)
    proc = await start(cfg, log)
    try:
        await wait_until(lambda: fake.calls_of("getUpdates"), 120, "polling to start")
        fake.push(fake.text(chat, user, "Write a very long story about an owl who learns at "
                                        "night, with many chapters."))
        await wait_until(lambda: fake.chat_messages(user["id"]), 120, "the first streamed part")
        took = await _sigterm(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert took <= STOP_LIMIT_S, f"stopped after {took:.1f} s\n{text[-2000:]}"
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not answered(fake, user["id"]), "stopped mid-answer: no final answer yet"
    last = fake.chat_messages(user["id"])[-1]
    assert "restarting" in last.text, last.text  # the user is told the question waits
    stored = rows(tmp_path, "SELECT role, status FROM messages ORDER BY id")
    assert stored == [("user", "pending")], stored  # kept for the restart, not failed

    fake.calls.clear()
    cfg = write_config(tmp_path, fake, "max_new_tokens = 40\ntemperature = 0.0")
    proc = await start(cfg, log)
    try:
        await wait_until(lambda: answered(fake, user["id"]), 180, "the recovered answer")
    finally:
        code = await stop(proc, fake)
    assert code == 0, log.read_text()[-3000:]
    stored = rows(tmp_path, "SELECT role, status FROM messages ORDER BY id")
    assert stored == [("user", "done"), ("assistant", "done")], stored  # answered once
    assert sum(1 for m in fake.chat_messages(user["id"]) if m.reply_markup) == 1


async def _seed(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir(parents=True, exist_ok=True)
    async with Store(tmp_path / "var" / "nightowl.db") as store:
        for i, (q, a) in enumerate(FACT_QA):
            await seed_chat(store, [(q, "I don't know.")], user=f"u{i}", feedback=-1,
                            correction=a)


async def test_sigterm_mid_training_stops_in_10_s_and_kills_the_trainer(
        tmp_path: Path, fake: FakeTelegramAPI, embedded_model_dir: Path) -> None:
    shutil.copytree(embedded_model_dir, tmp_path / "var" / "models" / embedded_model_dir.name)
    await _seed(tmp_path)
    admin = fake.user(5201, "Admin")
    # a run of many steps (about an hour here): stopping must not wait for it
    cfg = write_config(tmp_path, fake, "max_new_tokens = 40\ntemperature = 0.0")
    text = cfg.read_text().replace("[telegram]\n", f"[telegram]\nadmins = [{admin['id']}]\n")
    text = text.replace("[training]\nenabled = false\n",
                        "[training]\nenabled = false\nmax_steps = 5000\nmin_steps = 5000\n"
                        "threads = 1\n")
    cfg.write_text(text)
    log = tmp_path / "run.log"
    proc = await start(cfg, log)
    trainer = 0
    try:
        await wait_until(lambda: fake.calls_of("getUpdates"), 120, "polling to start")
        fake.push(fake.text(fake.private(admin), admin, "/retrain"))

        def training() -> bool:
            nonlocal trainer
            found = _trainers(proc.pid or 0)
            trainer = found[0] if found else 0
            return bool(trainer)

        try:
            await wait_until(training, 240, "the training child to start")
        except AssertionError:
            said = [m.text for m in fake.chat_messages(admin["id"])]
            raise AssertionError(f"no trainer; the bot said {said}; log: "
                                 f"{log.read_text()[-3000:]}") from None
        # let it get past its imports into the training loop
        await wait_until(lambda: any(p.stat().st_size > 0 for p in
                                     (tmp_path / "var").rglob("train.log")), 300,
                         "the trainer to write its log")
        took = await _sigterm(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = log.read_text()
    assert took <= STOP_LIMIT_S, f"stopped after {took:.1f} s\n{out[-2000:]}"
    assert proc.returncode == 0, out[-3000:]
    assert trainer
    await wait_until(lambda: not _alive(trainer), 5, "the training child to die with the bot")
    runs = rows(tmp_path, "SELECT status, summary FROM training_runs")
    assert len(runs) == 1 and runs[0][0] == "failed", runs
    assert "stopping" in str(runs[0][1]), runs
