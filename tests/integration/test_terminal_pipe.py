"""``nightowl chat`` fed by a pipe, as the issue's teaching session: every line is answered.

The terminal user is the local operator (an admin), so the per-user rate limits, which refuse a
sixth message within seconds by default, do not apply: 30 piped questions get 30 answers.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_piped_session_of_30_lines_gets_30_answers(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[storage]
dir = "{tmp_path / 'var'}"
[model]
backend = "fake"
[rag]
enabled = false
[training]
enabled = false
""")  # default [limits]: a burst of 5, 20 messages a minute
    lines = [f"Teaching question number {i}: what is fact {i}?" for i in range(30)]
    env = {**os.environ, "NIGHTOWL_CONFIG": str(cfg)}
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "chat"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "faster than I can answer" not in proc.stdout
    for i in range(30):
        assert f"You said: Teaching question number {i}: what is fact {i}?" in proc.stdout
    con = sqlite3.connect(tmp_path / "var" / "nightowl.db")
    try:
        rows = con.execute("SELECT role, status FROM messages ORDER BY id").fetchall()
    finally:
        con.close()
    assert rows == [("user", "done"), ("assistant", "done")] * 30
