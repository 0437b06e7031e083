"""The contract between the parent and the training child: :class:`TrainJob` in,
:class:`TrainResult` out, frozen dataclasses that cross the process boundary as JSON.

The parent builds a TrainJob, so a misspelt or missing field fails there, at construction, before
any model is loaded; the child (``python -m training.sft JOB.json``) rebuilds it with the same
dataclass, and a file that does not match it fails the same way. The child writes a TrainResult to
``<job_dir>/result.json``, which the parent rebuilds the same way. The train and eval files a job
names hold one ``{"messages": [...]}`` object per line (what ``training.dataset`` writes; a
message's ``weight`` 0/1 says whether it carries loss). The
child reports progress as stdout lines starting with :data:`PROGRESS`; the parent relays those.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llm.base import ChatMessage
from training.config import TrainingConfig
from training.errors import TrainingError
from training.probes import Probe

PROGRESS = "[train]"
T = TypeVar("T")


def progress(message: str) -> None:
    """A progress line from the child (the parent relays it to whoever started the run)."""
    print(f"{PROGRESS} {message}", flush=True)


@dataclass(frozen=True)
class RegressionSet:
    """General questions with the base model's own greedy answers (generated once, cached): the
    regression set the gate scores, and the replay set mixed into training."""

    questions: tuple[str, ...]
    key: str  # identifies the cached base answers: model, system prompt, questions, length
    cache: str  # JSON file where the base answers are kept between runs
    max_new_tokens: int = 40


@dataclass(frozen=True)
class TrainJob:
    """One training run, as the child needs it. Paths are strings (they go through JSON)."""

    model_path: str
    training: TrainingConfig
    job_dir: str  # job.json, result.json, the trainer's checkpoints and train.log live here
    train_file: str
    adapter_out: str  # the staging folder the trained adapter is saved to
    eval_file: str | None = None
    prefs_file: str | None = None  # method kto / sft+dpo: training.preferences rows
    system_prompt: str = ""
    init_adapter: str | None = None  # continue training this adapter instead of a fresh one
    reference_adapter: str | None = None  # None: the candidate is compared with the base model
    reference_version: str | None = None
    probes: tuple[Probe, ...] = ()
    regression: RegressionSet | None = None
    replay: RegressionSet | None = None  # base-replay questions mixed into training
    report_questions: tuple[str, ...] = ()  # recent real questions: changed answers are listed
    threads: int = 1

    def __post_init__(self) -> None:
        _expect(self, "training", TrainingConfig)
        if not all(isinstance(p, Probe) for p in self.probes):
            raise TrainingError("TrainJob.probes must be Probe objects")
        for name in ("regression", "replay"):
            if getattr(self, name) is not None:
                _expect(self, name, RegressionSet)

    @property
    def job_file(self) -> Path:
        return Path(self.job_dir) / "job.json"

    @property
    def result_file(self) -> Path:
        return Path(self.job_dir) / "result.json"

    def train_conversations(self) -> list[list[ChatMessage]]:
        return read_conversations(Path(self.train_file))

    def eval_conversations(self) -> list[list[ChatMessage]]:
        return read_conversations(Path(self.eval_file)) if self.eval_file else []

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        data = _object(text, cls)
        nested: dict[str, Any] = {}
        if "training" in data:
            nested["training"] = _build(TrainingConfig, data["training"])
        if "probes" in data:
            nested["probes"] = tuple(_build(Probe, p) for p in data["probes"])
        for name in ("regression", "replay"):
            if data.get(name) is not None:
                reg = _build(RegressionSet, data[name])
                nested[name] = dataclasses.replace(reg, questions=tuple(reg.questions))
        if "report_questions" in data:
            nested["report_questions"] = tuple(data["report_questions"])
        return _build(cls, {**data, **nested})


@dataclass(frozen=True)
class TrainStats:
    """What the trainer measured."""

    loss_curve: list[list[float]]  # [step, training loss] per logged step
    train_loss: float
    train_runtime_s: float
    samples_per_s: float
    steps: int
    epochs: float
    examples: int
    replay: int = 0  # base-replay rows mixed in


@dataclass(frozen=True)
class TrainResult:
    """What the child hands back: the adapter is in the job's ``adapter_out`` folder."""

    backend: str  # e.g. "peft-lora-cpu" or "unsloth-qlora-4bit"
    stats: TrainStats
    # The gate's scores per adapter ({"heldout", "probes", "regression", "reference"}), kept
    # verbatim in the run report and the adapter's meta.json; ``training.gate.decide`` reads them.
    scores: dict[str, Any]
    peak_rss_mb: float
    duration_s: float
    threads: int
    peak_cuda_mb: float | None = None

    def __post_init__(self) -> None:
        _expect(self, "stats", TrainStats)

    def summary(self) -> dict[str, Any]:
        """The run report's ``training`` section (also merged into the adapter's meta.json)."""
        s = self.stats
        return {"backend": self.backend, "steps": s.steps, "epochs": s.epochs,
                "examples": s.examples, "replay": s.replay, "train_loss": s.train_loss,
                "train_runtime_s": s.train_runtime_s, "samples_per_s": s.samples_per_s,
                "peak_rss_mb": self.peak_rss_mb, "duration_s": self.duration_s,
                "threads": self.threads, "peak_cuda_mb": self.peak_cuda_mb}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        data = _object(text, cls)
        if "stats" in data:
            data = {**data, "stats": _build(TrainStats, data["stats"])}
        return _build(cls, data)


def read_conversations(path: Path) -> list[list[ChatMessage]]:
    """The ``messages`` of every line of a JSONL dataset file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["messages"] for line in fh if line.strip()]


def _object(text: str, cls: type) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"not a {cls.__name__} file: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainingError(f"not a {cls.__name__} file: expected a JSON object")
    return data


def _build(cls: type[T], data: Any) -> T:
    """``cls(**data)``; a missing or unknown key is a TrainingError naming the dataclass."""
    if not isinstance(data, dict):
        raise TrainingError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TrainingError(f"{cls.__name__} does not match: {exc}") from exc


def _expect(obj: object, name: str, cls: type) -> None:
    value = getattr(obj, name)
    if not isinstance(value, cls):
        raise TrainingError(f"{type(obj).__name__}.{name} must be a {cls.__name__}, got "
                            f"{type(value).__name__}")
