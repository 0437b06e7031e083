"""The training child (issue #19 item 8): no credentials in its environment, and it dies with
its parent however the parent dies. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.config import Config
from training.launch import child_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_child_gets_no_credentials(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"TELEGRAM_BOT_TOKEN": "123:abc", "DISCORD_BOT_TOKEN": "x.y.z",
               "NIGHTOWL_API_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s", "OPENAI_API_KEY": "sk-1",
               "MY_DB_PASSWORD": "p", "HF_TOKEN": "hf_x", "GITHUB_AUTH": "g"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = child_env(cfg, 3)
    assert not set(secrets) & set(env), set(secrets) & set(env)
    assert env["PATH"] == os.environ["PATH"] and env["LANG"] == "C.UTF-8"
    assert env["OMP_NUM_THREADS"] == "3" and env["HF_HUB_OFFLINE"] == "1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead, just not reaped yet
        return fh.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = textwrap.dedent("""
        import asyncio, os, sys
        from pathlib import Path
        from training.launch import spawn_child

        async def main():
            child = await spawn_child(["-c", "import time; time.sleep(120)"],
                                      env=dict(os.environ), cwd=Path("."))
            print(child.pid, flush=True)
            await child.wait()

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert _alive(child)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # the kernel's SIGKILL is asynchronous
        time.sleep(0.05)
    assert not _alive(child), "the trainer outlived its parent"
