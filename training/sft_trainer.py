"""The SFT recipe the training child runs: the LoRA model, trl's SFTConfig, and the trainer.

trl's SFTTrainer + peft on rows tokenized by :mod:`training.recipe` (loss on final answers only,
base-replay rows mixed in), padding-free batches; the frozen base weights
in bf16 where the machine supports it (peft keeps the trainable LoRA matrices in float32). With
CUDA and unsloth importable: FastLanguageModel + 4-bit QLoRA + 8-bit AdamW + gradient
checkpointing instead of plain peft. Everything here runs in the child process (torch,
transformers, trl and peft are imported inside the functions).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from training.gate import bf16_supported
from training.job import TrainJob, TrainStats, progress
from training.recipe import IGNORE, KL_OFFSET, Plan, plan, tokenize


def load_model(job: TrainJob) -> tuple[Any, Any, str]:
    """(peft model, tokenizer, backend name): unsloth QLoRA on CUDA if available, else peft."""
    import torch

    t = job.training
    if torch.cuda.is_available():
        try:
            from unsloth import FastLanguageModel  # type: ignore[import-not-found]
        except Exception as exc:  # the optional `gpu` extra is not installed
            progress(f"unsloth not available ({exc.__class__.__name__}); using plain peft on CUDA")
        else:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=job.model_path, max_seq_length=t.max_seq_len, load_in_4bit=True)
            if job.init_adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True)
            else:
                model = FastLanguageModel.get_peft_model(
                    model, r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                    target_modules=t.target_modules, use_gradient_checkpointing="unsloth",
                    random_state=t.seed)
            return model, tokenizer, "unsloth-qlora-4bit"
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # frozen base weights in bf16 where supported (no per-step casting under autocast); peft
    # keeps the trainable LoRA matrices in float32
    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    base: Any = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=dtype)
    base = base.to(device)
    if job.init_adapter:
        model = PeftModel.from_pretrained(base, job.init_adapter, is_trainable=True)
    else:
        lcfg = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                          target_modules=t.target_modules, task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(base, lcfg)
    return model, tokenizer, f"peft-lora-{device}"


def sft_config(job: TrainJob, out: Path, backend: str, schedule: Plan) -> Any:
    """trl's SFTConfig from ``[training]`` and the run's :class:`~training.recipe.Plan`: the
    rows come tokenized with their labels (final answers only), padding-free, no checkpoints."""
    import torch
    from trl import SFTConfig

    t = job.training
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(out), max_steps=schedule.steps,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=schedule.warmup,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, max_grad_norm=t.max_grad_norm,
        seed=t.seed, data_seed=t.seed, logging_steps=1, save_strategy="no",
        report_to=[], padding_free=True, max_length=None,
        use_cpu=not cuda, bf16=bf16_supported(), dataloader_num_workers=0,
        optim="adamw_8bit" if backend.startswith("unsloth") else "adamw_torch",
        gradient_checkpointing=False, disable_tqdm=False,
        dataset_num_proc=None, remove_unused_columns=True)


def sparse_head_trainer(kl_weight: float) -> Any:
    """SFTTrainer whose loss projects the LM head only where a label exists (the final answers).

    trl's fused LM head recomputes the logits in tiles during backward to save GPU memory; on a CPU
    that costs about a third of every step. Here the model computes logits only at the labelled
    positions (``logits_to_keep`` with a boolean mask) and autograd does the rest. Labels at or
    above :data:`~training.recipe.KL_OFFSET` mark base-replay positions: they are trained with
    ``kl_weight`` × KL(base ‖ tuned) over the whole vocabulary (the base = the adapter disabled)
    instead of cross-entropy. The loss is normalised like trl's (sum / ``num_items_in_batch``).
    """
    import torch
    from trl import SFTTrainer

    F = torch.nn.functional

    class SparseHeadSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != IGNORE
            raw = labels[:, 1:][keep[:, :-1]]
            is_kl = raw >= KL_OFFSET
            targets = torch.where(is_kl, raw - KL_OFFSET, raw)
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
            n = targets.numel() if num_items_in_batch is None else num_items_in_batch
            ce = ~is_kl
            loss = F.cross_entropy(logits[ce], targets[ce], reduction="sum")
            if bool(is_kl.any()):
                with torch.no_grad(), model.disable_adapter():
                    ref = model(**inputs, use_cache=False, logits_to_keep=keep).logits
                ref = ref.reshape(-1, ref.shape[-1]).float()[is_kl]
                kl = F.kl_div(F.log_softmax(logits[is_kl], -1), F.log_softmax(ref, -1),
                              log_target=True, reduction="sum")
                loss = loss + kl_weight * kl
            loss = loss / torch.as_tensor(n, device=logits.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                hit = (logits[ce].argmax(-1) == targets[ce]).sum().item()
            self._metrics[mode]["mean_token_accuracy"].append(hit / max(1, int(ce.sum())))
            return (loss, outputs) if return_outputs else loss

    return SparseHeadSFTTrainer


def replay_answers(job: TrainJob, model: Any, tokenizer: Any,
                   template: str) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt, the base model's greedy answer) per replay question (cached per base model)."""
    from training.gate import decode_key, generate_greedy
    from training.replay import cached_answers

    rep = job.replay
    if rep is None or not rep.questions:
        return []
    prompts = [[{"role": "system", "content": job.system_prompt},
                {"role": "user", "content": q}] for q in rep.questions]

    def generate() -> list[str]:
        progress(f"generating the base model's answers to {len(prompts)} replay questions "
                 "(once per base model)")
        with model.disable_adapter():
            return generate_greedy(model, tokenizer, template, prompts, rep.max_new_tokens)

    answers = cached_answers(Path(rep.cache), decode_key(rep.key, model), generate)
    return [(p, a) for p, a in zip(prompts, answers, strict=True) if a.strip()]


def replay_rows(job: TrainJob, model: Any, tokenizer: Any, template: str) -> list[dict[str, Any]]:
    """The base-replay rows, tokenized with KL labels (``base_replay_loss = "kl"``) or plain
    labels (``"sft"``)."""
    kl = job.training.base_replay_loss == "kl"
    limit = job.replay.max_new_tokens if job.replay is not None else 0
    rows = []
    for p, a in replay_answers(job, model, tokenizer, template):
        cut = len(tokenizer(a, add_special_tokens=False)["input_ids"]) >= limit - 2
        rows.append(tokenize(tokenizer, template, [*p, {"role": "assistant", "content": a}],
                             replay=True, kl=kl, truncated=cut))
    return rows


def train(job: TrainJob, model: Any, tokenizer: Any, template: str, backend: str) -> TrainStats:
    """Train ``model`` (in place) on the job's train file mixed with the base-replay rows; a
    progress line per logged step."""
    import random

    from datasets import Dataset
    from transformers import TrainerCallback

    curve: list[list[float]] = []

    class Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if logs and "loss" in logs:
                curve.append([int(state.global_step), float(logs["loss"])])
                progress(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                         f"lr {logs.get('learning_rate', 0):.2e}")

    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    t = job.training
    taught = [tokenize(tokenizer, template, m, max_len=t.max_seq_len)
              for m in job.train_conversations()]
    replay = replay_rows(job, model, tokenizer, template)
    rows = taught + replay
    random.Random(t.seed).shuffle(rows)
    schedule = plan(t, len(taught), len(replay))
    progress(f"{schedule.steps} steps ({schedule.warmup} warm-up) on {len(taught)} examples "
             f"+ {len(replay)} base-replay rows ({t.base_replay_loss})")
    args = sft_config(job, Path(job.job_dir) / "checkpoints", backend, schedule)
    cls = sparse_head_trainer(t.base_replay_weight)
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, callbacks=[Progress()])
    started = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - started
    n_epochs = float(out.metrics.get("epoch", 0.0))
    return TrainStats(loss_curve=curve, train_loss=float(out.training_loss),
                      train_runtime_s=elapsed,
                      samples_per_s=len(rows) * n_epochs / max(elapsed, 1e-9),
                      steps=int(out.global_step), epochs=n_epochs, examples=len(taught),
                      replay=len(replay))
