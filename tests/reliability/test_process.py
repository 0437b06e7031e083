"""The real ``nightowl run`` process against the loopback Telegram fake: SIGKILL mid-answer, load.

These start NightOwl as a child process (``python -m bot.cli run``) exactly as an operator would,
with the Bot API pointed at the fake server running in the test's event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, fake: FakeTelegramAPI, model: str, extra: str = "") -> Path:
    path = tmp / "config.toml"
    path.write_text(f"""
[storage]
dir = "{tmp / 'var'}"
[model]
{model}
[rag]
embedding_model = "fake"
sample_on_first_run = false
[training]
enabled = false
[telegram]
base_url = "{fake.base_url}"
base_file_url = "{fake.base_file_url}"
stream_edit_interval_s = 0.3
poll_timeout_s = 1.0
request_timeout_s = 5.0
{extra}
""")
    return path


async def start(cfg: Path, log: Path, discord_token: str | None = None
                ) -> asyncio.subprocess.Process:
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "NIGHTOWL_CONFIG": str(cfg)}
    env.pop("DISCORD_BOT_TOKEN", None)
    if discord_token:
        env["DISCORD_BOT_TOKEN"] = discord_token
    out = log.open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", cwd=ROOT, env=env, stdout=out, stderr=out,
        stdin=asyncio.subprocess.DEVNULL)


async def wait_until(pred: object, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rows(tmp: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(tmp / "var" / "nightowl.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def stop(proc: asyncio.subprocess.Process, fake: FakeTelegramAPI) -> int:
    if proc.returncode is None:
        fake.release()
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    return proc.returncode


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as api:
        yield api


def answered(fake: FakeTelegramAPI, chat_id: int, n: int = 1) -> bool:
    """``n`` final answers (messages carrying the feedback keyboard) in the chat."""
    return sum(1 for m in fake.chat_messages(chat_id) if m.reply_markup) >= n


@pytest.mark.slow
async def test_sigkill_mid_answer_then_restart_answers_once(tmp_path: Path,
                                                           fake: FakeTelegramAPI,
                                                           embedded_model_dir: Path) -> None:
    target = tmp_path / "var" / "models" / embedded_model_dir.name
    shutil.copytree(embedded_model_dir, target)
    cfg = write_config(tmp_path, fake, "max_new_tokens = 160\ntemperature = 0.0")
    log = tmp_path / "run.log"
    user = fake.user(5001)
    chat = fake.private(user)
    proc = await start(cfg, log)
    try:
        await wait_until(lambda: fake.calls_of("getUpdates"), 120, "polling to start")
        fake.push(fake.text(chat, user, "Write a long story about an owl who learns at night."))
        # kill -9 as soon as the answer is visibly streaming
        await wait_until(lambda: fake.chat_messages(user["id"]), 120, "the first streamed part")
        proc.kill()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert not answered(fake, user["id"]), "killed before the final answer"
    stored = rows(tmp_path, "SELECT role, status FROM messages ORDER BY id")
    assert stored == [("user", "pending")], stored  # the question survived the kill

    fake2_calls = len(fake.calls)
    proc = await start(cfg, log)
    try:
        await wait_until(lambda: answered(fake, user["id"]), 180, "the recovered answer")
    finally:
        code = await stop(proc, fake)  # once it has exited, a duplicate would have been sent
    assert code == 0, log.read_text()[-3000:]
    assert len(fake.calls) > fake2_calls
    stored = rows(tmp_path, "SELECT role, status FROM messages ORDER BY id")
    assert stored == [("user", "done"), ("assistant", "done")], stored  # nothing duplicated
    assert sum(1 for m in fake.chat_messages(user["id"]) if m.reply_markup) == 1
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
async def test_load_100_users_x5_messages_across_both_platforms(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    from tests.fakes.discord_api import FakeDiscord

    dc = FakeDiscord()
    await dc.start()
    cfg = write_config(tmp_path, fake, 'backend = "fake"', extra=f"""
[discord]
api_base_url = "{dc.url}/api/v10"
gateway_url = "ws://127.0.0.1:{dc.port}/"
guild_ready_timeout_s = 0.1
stream_edit_interval_s = 0.3
allow_dms = true
[limits]
# five messages a second apart, each answered at once: a refusal here would be a defect, and
# a "please wait" must never pass for an answer
max_concurrent_per_user = 5
""")
    log = tmp_path / "run.log"
    tg_users = [fake.user(10_000 + i, f"U{i}") for i in range(50)]
    tg_chats = [fake.private(u) for u in tg_users]
    dc_users = [dc.add_user(f"d{i}") for i in range(50)]
    dc_chats = [dc.dm_channel_for(u)["id"] for u in dc_users]
    proc = await start(cfg, log, discord_token=dc.valid_token)
    sent_at: dict[str, list[float]] = {}
    dc_sent: dict[str, list[float]] = {}
    try:
        await wait_until(lambda: "Telegram: connected." in log.read_text()
                         and "Discord: connected." in log.read_text(), 180, "both platforms")
        started = time.monotonic()
        for round_ in range(5):
            for u, c in zip(tg_users, tg_chats, strict=True):
                fake.push(fake.text(c, u, f"question {round_} from {u['first_name']}"))
                sent_at.setdefault(f"tg{u['id']}", []).append(time.monotonic())
            for u, ch in zip(dc_users, dc_chats, strict=True):
                dc_sent.setdefault(ch, []).append(time.time())  # Discord stamps wall time
                await dc.user_message(u, f"question {round_} from {u['username']}", dm=True)
            await asyncio.sleep(1.0)

        def dc_replies(ch: str) -> list[dict[str, object]]:
            return [m for m in dc.channel_messages(ch)
                    if m["author"]["id"] == dc.bot["id"] and m["components"]]

        await wait_until(lambda: all(len(fake.chat_messages(u["id"])) >= 5 for u in tg_users)
                         and all(len(dc_replies(ch)) >= 5 for ch in dc_chats), 240,
                         "a reply to every message on both platforms")
        elapsed = time.monotonic() - started
        rss_kb = 0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    finally:
        code = await stop(proc, fake)
        await dc.stop()
    assert code == 0
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    assert not dc.violations, dc.violations
    latencies: list[float] = []
    dc_latencies: list[float] = []
    for u in tg_users:
        msgs = fake.chat_messages(u["id"])
        assert len(msgs) == 5, [m.text for m in msgs]  # exactly one reply per message
        for m in msgs:  # answers, not refusals
            assert m.text.startswith("You said: question"), m.text
        firsts = sorted(c.at for c in fake.calls_of("sendMessage")
                        if str(c.params.get("chat_id")) == str(u["id"]))
        latencies += [f - s for s, f in zip(sent_at[f"tg{u['id']}"], firsts, strict=True)]
    for ch in dc_chats:
        replies = dc_replies(ch)
        assert len(replies) == 5, [m["content"] for m in replies]
        for m in replies:
            content = str(m["content"])
            assert content.startswith("You said: question"), content
        firsts = sorted(dt.datetime.fromisoformat(m["timestamp"]).timestamp()
                        for m in dc.channel_messages(ch)
                        if m["author"]["id"] == dc.bot["id"])
        dc_latencies += [f - s for s, f in zip(dc_sent[ch], firsts, strict=True)]
    assert rss_kb < 2_000_000, f"RSS {rss_kb} kB"
    stored = rows(tmp_path, "SELECT COUNT(*) FROM messages WHERE status = 'pending'")
    assert stored == [(0,)]
    platforms = dict(rows(tmp_path, "SELECT platform, COUNT(*) FROM users GROUP BY platform"))
    assert platforms == {"telegram": 50, "discord": 50}
    # the bot tokens never reach a log, the database or any file in the storage dir
    for path in (tmp_path / "var").rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert TOKEN.encode() not in data and dc.valid_token.encode() not in data, path
    assert TOKEN not in text
    # a benchmark figure, not a timed assertion
    print(json.dumps({"load_messages": 500, "elapsed_s": round(elapsed, 2),
                      "telegram_p50_s": round(statistics.median(latencies), 3),
                      "telegram_p95_s": round(statistics.quantiles(latencies, n=20)[18], 3),
                      "discord_p50_s": round(statistics.median(dc_latencies), 3),
                      "discord_p95_s": round(statistics.quantiles(dc_latencies, n=20)[18], 3),
                      "rss_mb": rss_kb // 1024}))
