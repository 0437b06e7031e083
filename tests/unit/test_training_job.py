"""The parent→child contract: TrainJob/TrainResult fail at construction and round-trip as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from training import sft
from training.config import TrainingConfig
from training.errors import TrainingError
from training.job import RegressionSet, TrainJob, TrainResult, TrainStats, read_conversations
from training.probes import Probe


def _job(tmp_path: Path, **changes: Any) -> TrainJob:
    job = TrainJob(
        model_path="/models/tiny", training=TrainingConfig(max_steps=3, lora_r=4),
        job_dir=str(tmp_path / "job"), train_file=str(tmp_path / "train.jsonl"),
        adapter_out=str(tmp_path / "staging"), eval_file=str(tmp_path / "eval.jsonl"),
        system_prompt="Be brief.", reference_adapter="/adapters/v0001",
        reference_version="v0001", probes=(Probe("Capital of Zorbania?", "Quillton"),),
        regression=RegressionSet(questions=("Days in a week?",), key="k1",
                                 cache=str(tmp_path / "cache.json"), max_new_tokens=8),
        threads=2)
    return dataclasses.replace(job, **changes)


def test_a_misspelt_or_missing_field_fails_at_construction(tmp_path: Path) -> None:
    fields = {f.name: getattr(_job(tmp_path), f.name) for f in dataclasses.fields(TrainJob)}
    with pytest.raises(TypeError, match="adapter_outt"):
        TrainJob(**{**fields, "adapter_outt": "x"})
    del fields["train_file"]
    with pytest.raises(TypeError, match="train_file"):
        TrainJob(**fields)
    with pytest.raises(TrainingError, match="training must be a TrainingConfig"):
        _job(tmp_path, training=dataclasses.asdict(TrainingConfig()))
    with pytest.raises(TrainingError, match="Probe"):
        _job(tmp_path, probes=({"question": "q", "expected": "a"},))


def test_job_round_trips_through_json(tmp_path: Path) -> None:
    job = _job(tmp_path)
    again = TrainJob.from_json(job.to_json())
    assert again == job
    assert again.training.lora_r == 4 and again.probes[0].expected == "Quillton"
    assert again.regression is not None and again.regression.questions == ("Days in a week?",)
    assert (again.job_file, again.result_file) == (tmp_path / "job" / "job.json",
                                                   tmp_path / "job" / "result.json")
    bare = _job(tmp_path, regression=None, probes=(), eval_file=None)
    assert TrainJob.from_json(bare.to_json()) == bare
    assert bare.eval_conversations() == []


@pytest.mark.parametrize(("edit", "names"), [
    (lambda d: d.update(adapter_outt=d.pop("adapter_out")), "TrainJob"),
    (lambda d: d.pop("model_path"), "TrainJob"),
    (lambda d: d["training"].update(lora_rr=8), "TrainingConfig"),
    (lambda d: d["probes"][0].pop("expected"), "Probe"),
    (lambda d: d["regression"].update(cache_file="x"), "RegressionSet"),
])
def test_the_child_refuses_a_job_file_that_does_not_match(tmp_path: Path, edit: Any,
                                                          names: str) -> None:
    data = json.loads(_job(tmp_path).to_json())
    edit(data)
    with pytest.raises(TrainingError, match=names):
        TrainJob.from_json(json.dumps(data))
    # the child stops on it before it imports torch or loads a model
    path = tmp_path / "job.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TrainingError, match=names):
        sft.main([str(path)])
    with pytest.raises(TrainingError, match="JSON object"):
        TrainJob.from_json("[]")


def test_result_round_trips_and_summarises(tmp_path: Path) -> None:
    stats = TrainStats(loss_curve=[[1, 2.5], [2, 2.0]], train_loss=2.25, train_runtime_s=3.0,
                       samples_per_s=4.0, steps=2, epochs=1.0, examples=12, replay=3)
    result = TrainResult(backend="peft-lora-cpu", stats=stats,
                         scores={"heldout": {"candidate": {"loss": 1.0}}}, peak_rss_mb=900.0,
                         duration_s=10.0, threads=1)
    again = TrainResult.from_json(result.to_json())
    assert again == result and again.peak_cuda_mb is None
    assert again.summary() == {
        "backend": "peft-lora-cpu", "steps": 2, "epochs": 1.0, "examples": 12, "replay": 3,
        "train_loss": 2.25, "train_runtime_s": 3.0, "samples_per_s": 4.0, "peak_rss_mb": 900.0,
        "duration_s": 10.0, "threads": 1, "peak_cuda_mb": None}
    data = json.loads(result.to_json())
    data["stats"]["stepz"] = data["stats"].pop("steps")
    with pytest.raises(TrainingError, match="TrainStats"):
        TrainResult.from_json(json.dumps(data))
    with pytest.raises(TrainingError, match="stats must be a TrainStats"):
        TrainResult(backend="x", stats={"steps": 1}, scores={}, peak_rss_mb=0.0,  # type: ignore[arg-type]
                    duration_s=0.0, threads=1)


def test_dataset_files_are_read_as_conversations(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": msgs}) + "\n\n" + json.dumps({"messages": msgs}))
    assert read_conversations(path) == [msgs, msgs]
    assert _job(tmp_path, train_file=str(path)).train_conversations() == [msgs, msgs]
