"""Adapter registry: versions, atomic ACTIVE pointer, corrupt refusal, retention; the gate rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llm.errors import AdapterError
from tests.fakes.training_data import write_adapter_files
from training.gate import decide
from training.probes import ProbeFile
from training.registry import Registry


def _add(reg: Registry, status: str = "promoted") -> str:
    return reg.register(write_adapter_files(reg.staging_dir()),
                        {"status": status, "parent": reg.active()})


def test_versions_and_meta(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.versions() == [] and reg.active() is None
    v1, v2 = _add(reg), _add(reg, "rejected")
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.meta(v2)["status"] == "rejected" and reg.meta(v2)["version"] == "v0002"
    assert not list(reg.root.glob(".staging-*"))  # staged folders were renamed into place
    reg.set_active(v1)
    assert "* v0001" in reg.describe() and "v0002  rejected" in reg.describe()


def test_active_pointer_is_replaced_atomically(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path)
    v1, v2 = _add(reg), _add(reg)
    reg.set_active(v1)
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        calls.append((str(src), str(dst)))
        # before the rename the pointer still names the old version, complete
        assert reg.pointer.read_text().strip() == v1
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    reg.set_active(v2)
    assert calls and calls[-1][1] == str(reg.pointer)
    assert reg.active() == v2
    assert [p.name for p in reg.root.iterdir() if p.name.startswith(".ACTIVE")] == []


def test_corrupt_or_missing_adapter_is_refused_and_previous_kept(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1, v2, v3 = _add(reg), _add(reg), _add(reg)
    reg.set_active(v3)
    (reg.path(v2) / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="incomplete or corrupt"):
        reg.rollback(v2)
    assert reg.active() == v3
    (reg.path(v1) / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt"):
        reg.rollback(v1)
    with pytest.raises(AdapterError, match="does not exist"):
        reg.rollback("v0042")
    with pytest.raises(AdapterError, match="not an adapter version"):
        reg.rollback("../etc")
    v4 = _add(reg)  # the same check the model runs before loading: unreadable weights
    (reg.path(v4) / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="incomplete or corrupt"):
        reg.rollback(v4)
    assert reg.active() == v3


def test_rollback_goes_to_previous_promoted_then_base(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1 = _add(reg)
    _add(reg, "rejected")
    v3 = _add(reg)
    reg.set_active(v3)
    assert reg.rollback() == (v3, v1)  # skips the rejected v0002
    assert reg.rollback() == (v1, None)
    assert reg.active() is None
    with pytest.raises(AdapterError, match="already active"):
        reg.rollback()
    assert reg.rollback(v3) == (None, v3)
    assert reg.rollback("base") == (v3, None)


def test_retention_never_deletes_the_active(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    versions = [_add(reg) for _ in range(5)]
    reg.set_active(versions[0])
    deleted = reg.prune(2)
    assert deleted == versions[1:3]
    assert reg.versions() == [versions[0], *versions[3:]]


def _scores(c: float, r: float, pc: int = 0, pr: int = 0, plc: float = 1.0, plr: float = 1.0,
            rc: float = 2.0, rb: float = 2.0) -> dict:
    return {"heldout": {"candidate": {"loss": c, "accuracy": 0.5},
                        "reference": {"loss": r, "accuracy": 0.4}},
            "probes": {"candidate": {"total": 2, "passed": pc, "loss": plc},
                       "reference": {"total": 2, "passed": pr, "loss": plr}},
            "regression": {"candidate": {"loss": rc}, "base": {"loss": rb}}}


def test_gate_rule() -> None:
    assert decide(_scores(1.0, 2.0), 0.05).promote
    d = decide(_scores(2.0, 1.9), 0.05)
    assert not d.promote and "did not improve" in d.reasons[0]
    d = decide(_scores(1.0, 2.0, pc=0, pr=1), 0.05)
    assert not d.promote and any("probes got worse" in r for r in d.reasons)
    assert decide(_scores(1.0, 2.0, pc=1, pr=1, plc=1.5, plr=1.0), 0.05).promote  # loss: info
    d = decide(_scores(1.0, 2.0, rc=2.2, rb=2.0), 0.05)
    assert not d.promote and any("general ability dropped" in r for r in d.reasons)
    assert decide(_scores(1.0, 2.0, rc=2.08, rb=2.0), 0.05).promote
    assert not decide({"heldout": {"candidate": {"loss": float("nan")},
                                   "reference": {"loss": 1.0}}}, 0.05).promote


def test_probe_commands(tmp_path: Path) -> None:
    probes = ProbeFile(tmp_path / "probes.json")
    assert "No probes" in probes.command("list")
    assert "Added probe #1" in probes.command("add What is X? => Y")
    assert "Usage" in probes.command("add missing separator")
    probes.command("add Who? => Me")
    assert probes.command("list") == "#1 What is X? => Y\n#2 Who? => Me"
    assert "no probe #5" in probes.command("remove 5")
    assert "Removed probe #1" in probes.command("remove 1")
    assert [p.question for p in probes.load()] == ["Who?"]
    assert json.loads((tmp_path / "probes.json").read_text()) == [
        {"question": "Who?", "expected": "Me"}]


def test_a_regression_loss_that_cannot_be_measured_fails_the_gate() -> None:
    # every base regression answer empty: nothing to score, both losses NaN (gate.score_all)
    nan = float("nan")
    for rc, rb in ((nan, nan), (2.0, nan), (nan, 2.0)):
        d = decide(_scores(1.0, 2.0, rc=rc, rb=rb), 0.05)
        assert not d.promote, (rc, rb, d.reasons)
        assert any("not measurable" in r for r in d.reasons), d.reasons
        assert not any("within tolerance" in r for r in d.reasons)


ADD_PROBES = """
import sys
from pathlib import Path
from training.probes import ProbeFile

probes = ProbeFile(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    probes.command(f"add {sys.argv[2]} question {i}? => answer {i}")
"""


def test_concurrent_probe_adds_lose_nothing(tmp_path: Path) -> None:
    """/probe add from several threads (the bot) and another process (the console) at once."""
    import subprocess
    import sys
    import threading

    path = tmp_path / "probes.json"
    root = Path(__file__).resolve().parents[2]
    others = [subprocess.Popen([sys.executable, "-c", ADD_PROBES, str(path), f"p{n}", "40"],
                               cwd=root) for n in range(2)]
    start = threading.Barrier(4)

    def add(name: str) -> None:
        probes = ProbeFile(path)
        start.wait()
        for i in range(40):
            probes.command(f"add {name} question {i}? => answer {i}")

    threads = [threading.Thread(target=add, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in others] == [0, 0]
    questions = {p.question for p in ProbeFile(path).load()}
    expected = {f"{who} question {i}?" for who in ("t0", "t1", "t2", "t3", "p0", "p1")
                for i in range(40)}
    assert questions == expected, f"{len(expected - questions)} probes lost"

