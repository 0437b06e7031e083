"""Training throughput: our trainer vs a plain HF Trainer + peft baseline. Prints ONE JSON line.

Same model (the embedded SmolLM2-135M), same fixed synthetic chat dataset, same LoRA settings and
optimizer hyper-parameters, same process, one after the other. Ours = trl SFTTrainer with
assistant-only loss, padding-free batches, bf16 base weights and the LM head projected only at
labelled tokens (training/sft_trainer.py). Baseline = the
plain recipe: chat text tokenized, padded to the longest in the batch, loss on every token, fp32.
Both are scored with the same held-out metric (loss on assistant tokens).

    .venv/bin/python bench/training.py [--storage var/test-cache] [--epochs 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.job import TrainJob

ROOT = Path(__file__).resolve().parent.parent
# this file is named like the `training` package: put the project root first so imports resolve
sys.path.insert(0, str(ROOT))

TOPICS = ["retraining", "rollback", "the knowledge base", "Discord", "Telegram", "adapters",
          "probes", "exports", "backups", "rate limits", "privacy", "the scheduler"]


def synthetic(n: int, seed: int, system: str) -> list[dict[str, Any]]:
    """Chats of mixed length: some with a long retrieved-context system prompt, some short."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rnd.choice(TOPICS)
        sys_text = system
        if i % 3 == 0:
            facts = " ".join(f"Fact {k}: {topic} setting {k} defaults to {rnd.randint(1, 99)}."
                             for k in range(rnd.randint(4, 14)))
            sys_text += f"\n\nSources:\n[1] guide.md › {topic}\n{facts}"
        q = f"Question {i}: how does {topic} work when value {rnd.randint(1, 999)} is set?"
        words = rnd.randint(6, 40)
        a = (f"For {topic}, value {i} means " +
             " ".join(rnd.choice(["the", "bot", "uses", "a", "setting", "nightly", "adapter",
                                  "answer", "stored", "config"]) for _ in range(words)) + ".")
        rows.append({"messages": [{"role": "system", "content": sys_text},
                                  {"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]})
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ours(job: TrainJob) -> tuple[float, Any, Any, str]:
    from training.sft_trainer import load_model, train
    from training.template import training_template

    model, tok, backend = load_model(job)
    template = training_template(tok)
    stats = train(job, model, tok, template, backend)
    return stats.samples_per_s, model, tok, template


def run_baseline(job: TrainJob, rows: list[dict[str, Any]]) -> tuple[float, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    t = job.training
    tok = AutoTokenizer.from_pretrained(job.model_path)
    base = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(
        r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
        target_modules=t.target_modules, task_type="CAUSAL_LM", bias="none"))
    feats = [tok(tok.apply_chat_template(r["messages"], tokenize=False),
                 add_special_tokens=False)["input_ids"] for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def collate(batch: list[list[int]]) -> dict[str, Any]:
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, :len(x)] = torch.tensor(x)
            att[i, :len(x)] = 1
        labels = ids.clone()
        labels[att == 0] = -100
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    args = TrainingArguments(
        output_dir=str(Path(job.job_dir) / "baseline"), num_train_epochs=t.epochs,
        max_steps=t.max_steps, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, max_grad_norm=t.max_grad_norm,
        seed=t.seed, data_seed=t.seed, logging_steps=10, save_strategy="no",
        report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=feats,  # type: ignore[arg-type]
                      data_collator=collate)
    started = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - started
    epochs = float(out.metrics.get("epoch", t.epochs))
    return len(rows) * epochs / elapsed, model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--storage", default=str(ROOT / "var" / "test-cache"))
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args()

    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(opts.threads)
    from llm.config import DEFAULT_SYSTEM_PROMPT
    from llm.embedded import ensure_embedded_model
    from training.config import TrainingConfig
    from training.gate import assistant_scores
    from training.job import TrainJob

    model_path = str(ensure_embedded_model(Path(opts.storage), say=lambda s: None))
    settings = TrainingConfig(epochs=opts.epochs, grad_accum=1, warmup_steps=2, min_steps=0)
    rows = synthetic(opts.train + opts.eval, 7, DEFAULT_SYSTEM_PROMPT)
    train_rows, eval_rows = rows[:opts.train], rows[opts.train:]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("\n".join(json.dumps(r) for r in train_rows), encoding="utf-8")
        job = TrainJob(model_path=model_path, training=settings, job_dir=tmp,
                       train_file=str(train_file), adapter_out=str(Path(tmp) / "adapter"))
        import contextlib
        import io

        eval_convs = [r["messages"] for r in eval_rows]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            base_sps, base_model = run_baseline(job, train_rows)
            torch.manual_seed(settings.seed)
            ours_sps, model, tok, template = run_ours(job)
        n_tokens = sum(len(tok.apply_chat_template(r["messages"], tokenize=True,
                                                   return_dict=True)["input_ids"])
                       for r in train_rows)
        base_loss = assistant_scores(base_model, tok, template, eval_convs)["loss"]
        ours_loss = assistant_scores(model, tok, template, eval_convs)["loss"]
    print(json.dumps({
        "samples_s": round(ours_sps, 3), "baseline_samples_s": round(base_sps, 3),
        "speedup": round(ours_sps / base_sps, 3),
        "tokens_s": round(ours_sps * n_tokens / len(train_rows), 1),
        "baseline_tokens_s": round(base_sps * n_tokens / len(train_rows), 1),
        "eval_loss": round(ours_loss, 4),
        "baseline_eval_loss": round(base_loss, 4), "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "epochs": opts.epochs, "threads": opts.threads,
        "ours": ("trl SFTTrainer, assistant-only loss, padding-free, bf16 base weights, "
                 "LM head only on labelled tokens"),
        "baseline": "HF Trainer + peft, padded batches, full-sequence loss, fp32"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
