"""End to end, as a new user would: the real embedded model, real Chroma, the real embedder.

A question through the terminal adapter is answered from the shipped sample guide, both turns are
in the database with their sources, and a tiny learning cycle produces a versioned adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, model_dir: Path, extra: str = "") -> Path:
    """A config whose storage holds a copy of the converted embedded model (no reconversion)."""
    storage = tmp / "var"
    target = storage / "models" / model_dir.name
    if not target.exists():
        shutil.copytree(model_dir, target)
    path = tmp / "config.toml"
    path.write_text(f"""
[storage]
dir = "{storage}"
[model]
max_new_tokens = 40
temperature = 0.0
{extra}
""")
    return path


def db_rows(tmp: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(tmp / "var" / "nightowl.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_ask_json_answers_from_the_sample_guide(tmp_path: Path, embedded_model_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, embedded_model_dir)
    assert main(["--config", str(cfg), "ask", "How do I retrain the bot?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["answer"].strip()
    assert out["sources"], "the sample guide should be retrieved"
    assert any("retrain" in s["text"].lower() for s in out["sources"])
    assert out["latency_s"] > 0 and "adapter" in out
    rows = db_rows(tmp_path, "SELECT role, status, sources FROM messages ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [("user", "done"), ("assistant", "done")]
    assert json.loads(str(rows[1][2]))[0]["source"].endswith(".md")


@pytest.mark.slow
def test_piped_chat_process(tmp_path: Path, embedded_model_dir: Path) -> None:
    cfg = write_config(tmp_path, embedded_model_dir)
    env = {**os.environ, "NIGHTOWL_CONFIG": str(cfg)}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat"], input="How do I retrain the bot?\n/good\n"
        "/sources\n/quit\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Sources:" in proc.stdout and "recorded 👍" in proc.stdout
    rows = db_rows(tmp_path, "SELECT value FROM feedback")
    assert rows == [(1,)]


@pytest.mark.slow
def test_chat_feedback_then_train_creates_adapter(tmp_path: Path, embedded_model_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, embedded_model_dir, extra="""
[training]
min_examples = 2
max_steps = 2
warmup_steps = 0
batch_size = 1
grad_accum = 1
eval_fraction = 0.34
base_replay = 4
report_questions = 2
""")
    script = tmp_path / "script.txt"
    lines = []
    for q, a in [("What is the capital of Zorbland?", "The capital of Zorbland is Quix."),
                 ("Who founded NightOwl?", "NightOwl was founded by the night shift."),
                 ("What colour is the owl?", "The owl is silver."),
                 ("What is 2+2?", "4")]:
        lines += [q, f"/correct {a}", "/good"]
    script.write_text("\n".join(lines) + "\n/quit\n")
    env = {**os.environ, "NIGHTOWL_CONFIG": str(cfg)}
    with script.open() as stdin:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", "chat"], stdin=stdin,
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert len(db_rows(tmp_path, "SELECT id FROM corrections")) == 4
    code = main(["--config", str(cfg), "train"])
    out = capsys.readouterr().out
    assert code == 0, out
    adapters = sorted((tmp_path / "var" / "adapters").glob("v*"))
    assert adapters, out
    meta = json.loads((adapters[0] / "meta.json").read_text())
    assert meta["parent"] in (None, "base", "")
    runs = db_rows(tmp_path, "SELECT status, version FROM training_runs")
    assert runs and runs[-1][0] in ("promoted", "rejected")
    assert main(["--config", str(cfg), "adapters"]) == 0
    assert adapters[0].name in capsys.readouterr().out
