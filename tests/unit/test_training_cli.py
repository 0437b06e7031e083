"""CLI entry functions that need no model: adapters, rollback, export, export-model refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli.training import cmd_adapters, cmd_export, cmd_export_model, cmd_rollback
from bot.config import Config
from data.store import Store
from tests.fakes.training_data import seed_chat, write_adapter_files
from training.registry import Registry


def _adapter(reg: Registry) -> str:
    return reg.register(write_adapter_files(reg.staging_dir()),
                        {"status": "promoted", "examples": 3})


def test_adapters_and_rollback(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_adapters(cfg) == 0
    assert "No adapters trained yet" in capsys.readouterr().out
    reg = Registry(cfg.storage.path)
    v1, v2 = _adapter(reg), _adapter(reg)
    reg.set_active(v2)
    assert cmd_adapters(cfg) == 0
    out = capsys.readouterr().out
    assert "* v0002" in out and "Active: v0002" in out
    assert cmd_rollback(cfg, None) == 0
    assert "now v0001 (was v0002)" in capsys.readouterr().out and reg.active() == v1
    (reg.path(v2) / "adapter_model.safetensors").unlink()
    assert cmd_rollback(cfg, v2) == 1
    assert "Rollback refused" in capsys.readouterr().err and reg.active() == v1


async def test_export_default_and_explicit_path(cfg: Config, store: Store, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    await seed_chat(store, [("Reach me at a@b.io?", "Sure, I will write to you.")], user="x")
    out = tmp_path / "x.jsonl"
    assert await cmd_export(cfg, store, out) == 0
    record = json.loads(out.read_text())
    assert "a@b.io" not in json.dumps(record) and record["messages"][-1]["role"] == "assistant"
    assert await cmd_export(cfg, store, None) == 0
    assert len(list((cfg.storage.path / "exports").glob("dataset-*.jsonl"))) == 1
    assert "Wrote 1 examples" in capsys.readouterr().out


def test_export_model_refusals(cfg: Config, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_export_model(cfg, tmp_path / "m", gguf=False) == 1
    assert "No adapter is active" in capsys.readouterr().err
    other = cfg.replace(model__name=str(tmp_path / "some-hf-model"))
    assert cmd_export_model(other, tmp_path / "m", gguf=True) == 1
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err
