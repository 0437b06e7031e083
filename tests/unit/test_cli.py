"""The CLI entry point without the model: errors, backup/restore, help."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.cli import main
from data.store import Store


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "nightowl" in capsys.readouterr().out


def test_bad_config_exits_2_with_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[model]\ntemperature = 9\n")
    assert main(["--config", str(p), "status"]) == 2
    err = capsys.readouterr().err
    assert "nightowl: error:" in err and "[model].temperature" in err


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "chat"]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_without_tokens_names_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("DISCORD_BOT_TOKEN", raising=False)
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndir = "{tmp_path / "var"}"\n[model]\nbackend = "fake"\n')
    assert main(["--config", str(p), "run"]) == 2
    err = capsys.readouterr().err
    assert "TELEGRAM_BOT_TOKEN" in err and "DISCORD_BOT_TOKEN" in err


def test_backup_and_restore_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    var = tmp_path / "var"
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndir = "{var}"\n')

    async def seed(name: str) -> None:
        async with Store(var / "nightowl.db") as s:
            await s.ensure_user("terminal", name)

    async def users() -> list[str]:
        async with Store(var / "nightowl.db") as s:
            rows = await s.db.execute_fetchall("SELECT platform_user_id FROM users ORDER BY id")
            return [r[0] for r in rows]

    asyncio.run(seed("before"))
    assert main(["--config", str(p), "backup", str(tmp_path / "b.db")]) == 0
    asyncio.run(seed("after"))
    assert asyncio.run(users()) == ["before", "after"]
    assert main(["--config", str(p), "restore", str(tmp_path / "b.db")]) == 0
    assert asyncio.run(users()) == ["before"]
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    assert main(["--config", str(p), "restore", str(bad)]) == 2
    assert asyncio.run(users()) == ["before"]  # a bad backup never replaces the database
    assert main(["--config", str(p), "restore", str(tmp_path / "missing.db")]) == 2


def test_status_is_cheap_and_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndir = "{tmp_path / "var"}"\n')
    assert main(["--config", str(p), "status"]) == 0
    out = capsys.readouterr().out
    for needle in ("Model: embedded (local backend)", "Active adapter: base", "Knowledge: 0",
                   "Last training run: none", "Database: ok"):
        assert needle in out


def test_first_signal_stops_gracefully_second_forces_exit() -> None:
    import asyncio

    from bot.app import ShutdownSignals

    stop = asyncio.Event()
    said: list[str] = []
    exits: list[int] = []
    handler = ShutdownSignals(stop, said.append, force_exit=exits.append)
    handler()
    assert stop.is_set() and exits == [] and "again to force" in said[0]
    handler()
    assert exits == [130]
