"""Start the training child so the bot keeps answering and a crash cannot take it down.

The parent writes the :class:`~training.job.TrainJob` to ``job.json``, starts
``python -m training.sft job.json`` with bounded torch threads in its own session, tees the
child's output to the terminal (tqdm and progress lines) and to ``train.log``, relays its
progress lines, and rebuilds the :class:`~training.job.TrainResult` from ``result.json``. A
non-zero exit (crash, OOM kill, SIGKILL) raises TrainingError; the caller marks the run failed and
promotes nothing. A cancelled parent kills the child: no orphan trainer is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import LearningSettings
from training.errors import TrainingError
from training.job import PROGRESS, TrainJob, TrainResult

Say = Callable[[str], Any]


def training_threads(cfg: LearningSettings) -> int:
    """``[training] threads``, or all cores but one (the bot keeps one to answer)."""
    if cfg.training.threads > 0:
        return cfg.training.threads
    return max(1, (os.cpu_count() or 2) - 1)


def child_env(cfg: LearningSettings, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("HF_HOME", str(cfg.storage.path / "hf"))
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


async def _tee(stream: asyncio.StreamReader | None, sinks: list[Any], say: Say | None,
               tail: list[str]) -> None:
    if stream is None:
        return
    buf = ""
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            break
        text = chunk.decode("utf-8", "replace")
        for sink in sinks:
            sink.write(text)
            sink.flush()
        buf += text
        *lines, buf = buf.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                tail.append(line)
                del tail[:-40]
                if say is not None and line.startswith(PROGRESS):
                    say(line)


async def train_in_child(cfg: LearningSettings, job: TrainJob, *, say: Say | None = None,
                         echo: bool = True) -> TrainResult:
    """Run one training job in a child process and return its result."""
    job_dir = Path(job.job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    job.job_file.write_text(job.to_json(), encoding="utf-8")
    log_path = job_dir / "train.log"
    tail: list[str] = []
    with log_path.open("w", encoding="utf-8") as logf:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "training.sft", str(job.job_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(cfg, job.threads), cwd=str(job_dir), start_new_session=True)
        err_sinks: list[Any] = [logf] + ([sys.stderr] if echo else [])
        try:
            await asyncio.gather(_tee(proc.stdout, [logf], say, tail),
                                 _tee(proc.stderr, err_sinks, None, tail))
            rc = await proc.wait()
        except BaseException:  # cancelled (shutdown): never leave an orphan trainer behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
    if rc != 0:
        how = f"exit code {rc}"
        if rc < 0:
            sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else -rc
            how = f"killed by signal {sig}" + (" (out of memory?)" if rc == -9 else "")
        last = "\n".join(tail[-6:])
        raise TrainingError(f"the training process failed ({how}); nothing was promoted. "
                            f"Log: {log_path}\n{last}")
    if not job.result_file.exists():
        raise TrainingError(f"the training process exited without a result; see {log_path}")
    return TrainResult.from_json(job.result_file.read_text(encoding="utf-8"))
