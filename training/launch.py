"""Start the training child so the bot keeps answering and a crash cannot take it down.

The parent writes the :class:`~training.job.TrainJob` to ``job.json``, starts
``python -m training.sft job.json`` with bounded torch threads in its own session, tees the
child's output to the terminal (tqdm and progress lines) and to ``train.log``, relays its
progress lines, and rebuilds the :class:`~training.job.TrainResult` from ``result.json``. A
non-zero exit (crash, OOM kill, SIGKILL) raises TrainingError; the caller marks the run failed and
promotes nothing. A cancelled parent kills the child, and a parent that dies (``kill -9``
included) takes the child with it (``PR_SET_PDEATHSIG``): no orphan trainer is left behind. The
child's environment holds no credentials (:data:`SECRET_NAMES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
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


# Environment names that hold credentials: the trainer needs none of them (it reads local files,
# offline), so a compromised or verbose child cannot leak a platform token.
SECRET_NAMES = re.compile(r"(?i)TOKEN|SECRET|PASSW(?:OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|"
                          r"CREDENTIAL|WEBHOOK|COOKIE|SESSION_?KEY|AUTH")
PR_SET_PDEATHSIG = 1


def child_env(cfg: LearningSettings, threads: int) -> dict[str, str]:
    """The parent's environment without credentials, with bounded threads and offline hubs."""
    env = {k: v for k, v in os.environ.items() if not SECRET_NAMES.search(k)}
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


def die_with_parent() -> None:
    """``preexec_fn`` of the child: the kernel sends it SIGKILL when the parent dies, however it
    dies (``kill -9`` included), so no trainer outlives the bot. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl ran
        os._exit(1)


async def spawn_child(args: list[str], *, env: dict[str, str], cwd: Path
                      ) -> asyncio.subprocess.Process:
    """``python ARGS`` in its own session, piped, dying with this process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=str(cwd), start_new_session=True, preexec_fn=die_with_parent)


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
        proc = await spawn_child(["-m", "training.sft", str(job.job_file)],
                                 env=child_env(cfg, job.threads), cwd=job_dir)
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
