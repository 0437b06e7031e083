"""One real vLLM (CPU build, scripts/vllm.sh) per test session, on loopback with the embedded model.

Every test here is marked ``cluster`` (``-m "not cluster"`` skips them: the first start costs a
few minutes). The server runs in its own run dir under the session's tmp dir on a free port and
is stopped when the session ends. Without ``var/vllm-venv`` the session installs it once
(``bash scripts/vllm.sh install``, a few minutes); if that fails the tests are skipped with the
installer's last lines as the reason.

``NIGHTOWL_VLLM_REUSE_RUN_DIR=DIR`` (development only) uses the server that ``NIGHTOWL_VLLM_RUN_DIR=
DIR bash scripts/vllm.sh start --storage var/test-cache`` started, and leaves it running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TEST_CACHE

SCRIPT = ROOT / "scripts" / "vllm.sh"
VENV = Path(os.environ.get("NIGHTOWL_VLLM_VENV", ROOT / "var" / "vllm-venv"))
DURATIONS: list[tuple[str, float]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts the real vLLM server (minutes); "
                            "-m 'not cluster' skips them")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if DURATIONS:
        terminalreporter.write_line("vLLM: " + ", ".join(f"{k} {v:.0f} s" for k, v in DURATIONS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Vllm:
    """A vLLM started by scripts/vllm.sh in its own run dir."""

    run_dir: Path
    port: int
    owned: bool = True
    log: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_dir(self) -> Path:
        return TEST_CACHE / "models" / "smollm2-135m-instruct"

    def _run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NIGHTOWL_VLLM_RUN_DIR": str(self.run_dir),
               "NIGHTOWL_VLLM_TIMEOUT": os.environ.get("NIGHTOWL_VLLM_TIMEOUT", "600")}
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)

    def start(self, label: str = "start") -> float:
        t0 = time.monotonic()
        res = self._run("start", "--port", str(self.port), "--storage", str(TEST_CACHE))
        took = time.monotonic() - t0
        if res.returncode != 0:
            raise RuntimeError(f"bash scripts/vllm.sh start failed ({res.returncode}):\n"
                               f"{res.stderr[-3000:]}")
        assert f'base_url = "{self.base_url}"' in res.stdout  # the lines to paste
        DURATIONS.append((label, took))
        return took

    def stop(self) -> float:
        t0 = time.monotonic()
        res = self._run("stop", timeout=120)
        assert res.returncode == 0, res.stderr
        took = time.monotonic() - t0
        DURATIONS.append(("stop", took))
        return took

    def status(self) -> str:
        return self._run("status", timeout=60).stdout.strip()


def _venv_or_skip() -> None:
    if (VENV / ".nightowl-vllm").is_file():
        return
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True,
                         timeout=1800, cwd=ROOT)
    if res.returncode != 0:
        pytest.skip(f"no vLLM venv at {VENV} and `bash scripts/vllm.sh install` failed: "
                    f"{res.stderr.strip()[-600:]}")
    DURATIONS.append(("install", time.monotonic() - t0))


def unload_all(base_url: str) -> None:
    """Unload every runtime adapter of the server (another NightOwl's names)."""
    import httpx

    for entry in httpx.get(f"{base_url}/models", timeout=30).json()["data"]:
        if entry.get("parent"):
            httpx.post(f"{base_url}/unload_lora_adapter", json={"lora_name": entry["id"]},
                       timeout=30)


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Iterator[Vllm]:
    _venv_or_skip()
    reuse = os.environ.get("NIGHTOWL_VLLM_REUSE_RUN_DIR")
    if reuse:
        run_dir = Path(reuse)
        server = Vllm(run_dir, int((run_dir / "vllm.port").read_text()), owned=False)
        assert "ready" in server.status(), server.status()
        unload_all(server.base_url)  # a clean slate: names of an earlier session point elsewhere
        yield server
        return
    server = Vllm(tmp_path_factory.mktemp("vllm-run"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make_lora(base_dir: Path, out: Path, *, rank: int = 16, seed: int | None = 0,
              tiny_other_model: bool = False) -> Path:
    """A peft LoRA folder for the embedded model (no training). ``seed``: random B weights, so
    answers differ from the base; None: zero B (answers like the base). ``tiny_other_model``:
    the same layout for a different, tiny Llama (wrong shapes for the served model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base: Any
    if tiny_other_model:
        base = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=4, vocab_size=49152))
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lcfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                      task_type="CAUSAL_LM", init_lora_weights=seed is None)
    peft_model = get_peft_model(base, lcfg)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def loras(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path
          ) -> dict[str, Path]:
    """A registry-like folder: v0001-v0003 (random B, distinct), v0011/v0013 (two more, never
    loaded by another test: see test_canary_share_routes_to_the_candidate), r32 (rank 32),
    other (made for another base model)."""
    root = tmp_path_factory.mktemp("lora") / "adapters"
    out = {f"v{i:04d}": make_lora(embedded_model_dir, root / f"v{i:04d}", seed=i)
           for i in (1, 2, 3, 11, 13)}
    out["r32"] = make_lora(embedded_model_dir, root / "v0032", rank=32, seed=5)
    out["other"] = make_lora(embedded_model_dir, root / "v0099", seed=7, tiny_other_model=True)
    return out
