"""The preference stages the training child runs for ``method = "kto"`` and ``"sft+dpo"`` (trl).

* KTO trains the fresh LoRA adapter with trl's KTOTrainer on the job's preference file (unpaired
  desirable / undesirable rows); the base-replay answers join as desirable rows, since KTO has no
  place for the SFT stage's KL term. The reference is a frozen copy of the starting adapter.
* DPO runs after the SFT stage on (correction, corrected answer) pairs; trl's reference is a frozen
  copy of the SFT adapter, so DPO moves the model only relative to what SFT taught.

trl adds that reference as a second adapter ("ref"); the callers save only ``default``. Steps:
KTO is sized like SFT (:func:`training.recipe.plan`, so a small day gets ``min_steps``); DPO runs
``pref_epochs`` over its pairs. Both use ``pref_learning_rate`` and ``pref_beta``.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from training.gate import bf16_supported
from training.job import TrainJob, TrainStats, progress
from training.preferences import read_rows
from training.recipe import plan


def _columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without ``meta`` (the ids /forget purges by): trl sees only its own columns."""
    return [{k: v for k, v in r.items() if k != "meta"} for r in rows]


def _args(cls: Any, job: TrainJob, out: Path, steps: int, warmup: int, **extra: Any) -> Any:
    import torch

    t = job.training
    return cls(output_dir=str(out), max_steps=steps, learning_rate=t.pref_learning_rate,
               lr_scheduler_type=t.lr_scheduler, warmup_steps=warmup,
               per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
               max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, seed=t.seed,
               data_seed=t.seed, logging_steps=1, save_strategy="no", report_to=[],
               use_cpu=not torch.cuda.is_available(), bf16=bf16_supported(),
               gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=False,
               beta=t.pref_beta, precompute_ref_log_probs=True, max_length=t.max_seq_len,
               **extra)


def _run(trainer: Any, rows: int, examples: int, replay: int) -> TrainStats:
    started = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - started
    curve = [[int(h["step"]), float(h["loss"])] for h in trainer.state.log_history if "loss" in h]
    for step, loss in curve:
        progress(f"step {step}/{out.global_step} loss {loss:.4f}")
    model = trainer.model
    if "default" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
    epochs = float(out.metrics.get("epoch", 0.0))
    return TrainStats(loss_curve=curve, train_loss=float(out.training_loss),
                      train_runtime_s=elapsed, samples_per_s=rows * epochs / max(elapsed, 1e-9),
                      steps=int(out.global_step), epochs=epochs, examples=examples,
                      replay=replay)


def train_kto(job: TrainJob, model: Any, tokenizer: Any, template: str,
              replay: list[tuple[list[dict[str, str]], str]]) -> TrainStats:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    tokenizer.chat_template = template
    rows = _columns(read_rows(Path(job.prefs_file or "")))
    taught = len(rows)
    rows += [{"prompt": p, "completion": [{"role": "assistant", "content": a}], "label": True}
             for p, a in replay]
    random.Random(job.training.seed).shuffle(rows)  # KTO reads in order: mix the labels
    schedule = plan(job.training, taught, len(replay))
    progress(f"KTO: {schedule.steps} steps on {taught} rated answers + {len(replay)} replayed")
    args = _args(KTOConfig, job, Path(job.job_dir) / "kto", schedule.steps, schedule.warmup)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    return _run(trainer, len(rows), taught, len(replay))


def train_dpo(job: TrainJob, model: Any, tokenizer: Any, template: str,
              sft: TrainStats) -> TrainStats:
    """DPO after SFT; the returned stats add the DPO steps and curve to the SFT stage's."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer.chat_template = template
    rows = _columns(read_rows(Path(job.prefs_file or "")))
    t = job.training
    steps = max(1, math.ceil(t.pref_epochs * len(rows) / (t.batch_size * t.grad_accum)))
    progress(f"DPO: {steps} steps on {len(rows)} pairs (correction vs corrected answer)")
    args = _args(DPOConfig, job, Path(job.job_dir) / "dpo", steps,
                 math.ceil(t.warmup_ratio * steps))
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    dpo = _run(trainer, len(rows), sft.examples, sft.replay)
    last = sft.steps
    return TrainStats(loss_curve=sft.loss_curve + [[last + s, v] for s, v in dpo.loss_curve],
                      train_loss=dpo.train_loss,
                      train_runtime_s=sft.train_runtime_s + dpo.train_runtime_s,
                      samples_per_s=sft.samples_per_s, steps=sft.steps + dpo.steps,
                      epochs=sft.epochs, examples=sft.examples, replay=sft.replay)
