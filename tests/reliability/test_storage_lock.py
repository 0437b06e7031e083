"""Concurrent processes on one storage dir (issue #19 item 7): real processes, real flock locks,
the real `nightowl` CLI for the refused writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.app import open_services
from bot.config import Config
from data.lock import StorageBusy, holders, storage_lock
from data.store import Store

ROOT = Path(__file__).resolve().parents[2]


def hold(storage: Path, what: str) -> subprocess.Popen[str]:
    """A child process that holds a lock (``what`` = "serve" or "train") until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from data.lock import storage_lock
        from training.cycle import run_lock
        storage = Path({str(storage)!r})
        ctx = storage_lock(storage, "nightowl run") if {what!r} == "serve" else run_lock(storage)
        with ctx:
            print("held", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def nightowl(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIGHTOWL_STORAGE_DIR": str(storage)}
    cfg = storage.parent / "config.toml"
    cfg.write_text(f'[storage]\ndir = "{storage}"\n[model]\nbackend = "fake"\n')
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(cfg), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_knowledge_writes_are_refused_while_a_bot_runs(tmp_path: Path) -> None:
    storage = tmp_path / "var"
    doc = tmp_path / "note.md"
    doc.write_text("# Note\n\nThe boiler is serviced every March.\n")
    bot = hold(storage, "serve")
    try:
        for args in (("ingest", str(doc)), ("kb", "remove", str(doc)), ("kb", "reindex")):
            res = nightowl(storage, *args)
            assert res.returncode == 2, (args, res.stdout, res.stderr)  # a user error
            assert "in use by nightowl run (pid" in res.stderr, res.stderr
            assert "/ingest" in res.stderr
        assert nightowl(storage, "kb", "list").returncode == 0  # reading is fine
    finally:
        bot.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        bot.wait()
    res = nightowl(storage, "ingest", str(doc))
    assert res.returncode == 0, res.stderr
    assert "added" in res.stdout


def test_serving_processes_share_the_dir_and_exclude_writers(tmp_path: Path) -> None:
    storage = tmp_path / "var"
    bot = hold(storage, "serve")
    try:
        with storage_lock(storage, "nightowl chat"):  # a terminal chat next to the bot: fine
            assert [h.role for h in holders(storage)] == ["nightowl run"]
        with pytest.raises(StorageBusy, match="in use by nightowl run"), \
                storage_lock(storage, "nightowl kb", exclusive=True):
            pass
    finally:
        bot.kill()
        bot.wait()
    with storage_lock(storage, "nightowl kb", exclusive=True):
        assert holders(storage) == []  # the dead holder's info file is gone too


async def test_a_start_does_not_fail_another_process_live_run(cfg: Config) -> None:
    storage = cfg.storage.path
    storage.mkdir(parents=True)
    async with Store(storage / "nightowl.db") as store:
        run_id = await store.start_run("nightly")
    trainer = hold(storage, "train")
    try:
        async with open_services(cfg, knowledge=False, learning=False) as svc:
            assert (await svc.store.runs(1))[0].status == "running"
    finally:
        trainer.kill()
        trainer.wait()
    async with open_services(cfg, knowledge=False, learning=False) as svc:
        run = (await svc.store.runs(1))[0]
        assert run.id == run_id and run.status == "failed"  # now it really was interrupted
