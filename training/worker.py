"""The training child process: ``python -m training.worker JOB.json``.

Reads a job written by :mod:`training.trainer`, trains a LoRA adapter with trl's SFTTrainer + peft
(assistant-only loss, padding-free batches, bf16 autocast where supported), saves it to the job's
staging folder, scores candidate vs reference (held-out, probes, regression set) and writes
``result.json``. Any failure exits non-zero; the parent then marks the run failed and promotes
nothing. With CUDA and unsloth importable it uses FastLanguageModel + 4-bit QLoRA + 8-bit AdamW +
gradient checkpointing instead of plain peft.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

FAULT_ENV = "NIGHTOWL_TRAIN_FAULT"  # "crash" | "kill": fault injection for tests


def log(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fault(stage: str) -> None:
    fault = os.environ.get(FAULT_ENV, "")
    if fault == f"crash:{stage}" or (fault == "crash" and stage == "step"):
        raise RuntimeError(f"injected training crash at {stage} ({FAULT_ENV})")
    if fault == f"kill:{stage}" or (fault == "kill" and stage == "step"):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def load_model(job: dict[str, Any]) -> tuple[Any, Any, str]:
    """(peft model, tokenizer, backend name): unsloth QLoRA on CUDA if available, else peft."""
    import torch

    t = job["training"]
    if torch.cuda.is_available() and job.get("allow_unsloth", True):
        try:
            from unsloth import FastLanguageModel  # type: ignore[import-not-found]
        except Exception as exc:  # the optional `gpu` extra is not installed
            log(f"unsloth not available ({exc.__class__.__name__}); using plain peft on CUDA")
        else:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=job["model_path"], max_seq_length=t["max_seq_len"], load_in_4bit=True)
            if job.get("init_adapter"):
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, job["init_adapter"], is_trainable=True)
            else:
                model = FastLanguageModel.get_peft_model(
                    model, r=t["lora_r"], lora_alpha=t["lora_alpha"],
                    lora_dropout=t["lora_dropout"], target_modules=t["target_modules"],
                    use_gradient_checkpointing="unsloth", random_state=t["seed"])
            return model, tokenizer, "unsloth-qlora-4bit"
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.evaluate import bf16_supported

    tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # frozen base weights in bf16 where supported (no per-step casting under autocast); peft
    # keeps the trainable LoRA matrices in float32
    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    base: Any = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=dtype)
    base = base.to(device)
    if job.get("init_adapter"):
        model = PeftModel.from_pretrained(base, job["init_adapter"], is_trainable=True)
    else:
        lcfg = LoraConfig(r=t["lora_r"], lora_alpha=t["lora_alpha"],
                          lora_dropout=t["lora_dropout"], target_modules=t["target_modules"],
                          task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(base, lcfg)
    return model, tokenizer, f"peft-lora-{device}"


def sft_config(job: dict[str, Any], out: Path, backend: str) -> Any:
    import torch
    from trl import SFTConfig

    from training.evaluate import bf16_supported

    t = job["training"]
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(out), num_train_epochs=t["epochs"], max_steps=t["max_steps"],
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"],
        lr_scheduler_type=t["lr_scheduler"], warmup_steps=t["warmup_steps"],
        per_device_train_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["grad_accum"], max_grad_norm=t["max_grad_norm"],
        seed=t["seed"], data_seed=t["seed"], logging_steps=1, save_strategy="no",
        report_to=[], assistant_only_loss=True, padding_free=True, max_length=None,
        use_cpu=not cuda, bf16=bf16_supported(), dataloader_num_workers=0,
        optim="adamw_8bit" if backend.startswith("unsloth") else "adamw_torch",
        gradient_checkpointing=False, disable_tqdm=False,
        dataset_num_proc=None, remove_unused_columns=True)


def sparse_head_trainer() -> Any:
    """SFTTrainer whose loss projects the LM head only where a label exists (assistant tokens).

    trl's fused LM head recomputes the logits in tiles during backward to save GPU memory; on a CPU
    that costs about a third of every step. Here the model computes logits only at the labelled
    positions (``logits_to_keep`` with a boolean mask) and autograd does the rest. The loss is
    normalised exactly like trl's (sum over tokens / ``num_items_in_batch``).
    """
    import torch
    from trl import SFTTrainer

    class SparseHeadSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            targets = labels[:, 1:][keep[:, :-1]]
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
            n = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / \
                torch.as_tensor(n, device=logits.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                correct = (logits.argmax(-1) == targets).sum().item()
            self._metrics[mode]["mean_token_accuracy"].append(correct / max(1, targets.numel()))
            return (loss, outputs) if return_outputs else loss

    return SparseHeadSFTTrainer


def train(job: dict[str, Any], model: Any, tokenizer: Any, template: str,
          backend: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    train_rows = [{"messages": r["messages"]} for r in _read(job["train_file"])]
    curve: list[list[float]] = []

    class Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if logs and "loss" in logs:
                curve.append([int(state.global_step), float(logs["loss"])])
                log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0):.2e}")
                _fault("step")

    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = sft_config(job, Path(job["job_dir"]) / "checkpoints", backend)
    cls = SFTTrainer if backend.startswith("unsloth") else sparse_head_trainer()
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                  processing_class=tokenizer, callbacks=[Progress()])
    _fault("start")
    started = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - started
    n_epochs = float(out.metrics.get("epoch", job["training"]["epochs"]))
    samples = len(train_rows) * n_epochs
    return {"loss_curve": curve, "train_loss": float(out.training_loss),
            "train_runtime_s": elapsed, "samples_per_s": samples / max(elapsed, 1e-9),
            "steps": int(out.global_step), "epochs": n_epochs, "examples": len(train_rows)}


def _read(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def evaluate_all(job: dict[str, Any], model: Any, tokenizer: Any, template: str) -> dict[str, Any]:
    from training.evaluate import assistant_scores, generate_greedy, probe_scores

    heldout = [r["messages"] for r in _read(job["eval_file"])] if job.get("eval_file") else []
    probes = job.get("probes") or []
    system = job["system_prompt"]
    ref = job.get("reference_adapter")
    if ref:
        model.load_adapter(ref, adapter_name="reference")
    scores: dict[str, Any] = {"heldout": {}, "probes": {}, "regression": {},
                              "reference": job.get("reference_version") or "base"}

    def score_as(who: str) -> None:
        scores["heldout"][who] = assistant_scores(model, tokenizer, template, heldout)
        scores["probes"][who] = probe_scores(model, tokenizer, template, system, probes)

    log(f"evaluating candidate on {len(heldout)} held-out, {len(probes)} probes")
    model.set_adapter("default")
    score_as("candidate")
    if ref:
        model.set_adapter("reference")
        score_as("reference")
        model.set_adapter("default")
    else:
        with model.disable_adapter():
            score_as("reference")
    questions = job.get("regression_questions") or []
    if questions:
        prompts = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
                   for q in questions]
        cache = Path(job["regression_cache"])
        base_answers: list[str] | None = None
        if cache.exists():
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("key") == job["regression_key"]:
                base_answers = list(data["answers"])
        with model.disable_adapter():
            if base_answers is None:
                log(f"generating base answers for {len(questions)} regression questions (once)")
                base_answers = generate_greedy(model, tokenizer, template, prompts,
                                               job.get("regression_tokens", 40))
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": job["regression_key"], "answers": base_answers},
                                          ensure_ascii=False, indent=1), encoding="utf-8")
                os.replace(tmp, cache)
            convs = [[*p, {"role": "assistant", "content": a}]
                     for p, a in zip(prompts, base_answers, strict=True) if a.strip()]
            scores["regression"]["base"] = assistant_scores(model, tokenizer, template, convs)
        scores["regression"]["candidate"] = assistant_scores(model, tokenizer, template, convs)
    return scores


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    import torch

    threads = int(job.get("threads") or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(job["training"]["seed"])
    started = time.perf_counter()
    log(f"loading {job['model_path']} ({threads} threads)")
    model, tokenizer, backend = load_model(job)
    from training.template import training_template

    template = training_template(tokenizer)
    stats = train(job, model, tokenizer, template, backend)
    staging = Path(job["adapter_out"])
    model.save_pretrained(str(staging))
    _fault("saved")
    scores = evaluate_all(job, model, tokenizer, template)
    result = {"ok": True, "backend": backend, **stats, "scores": scores,
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "duration_s": round(time.perf_counter() - started, 2), "threads": threads}
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    tmp = Path(job["result_file"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(tmp, job["result_file"])
    log(f"done in {result['duration_s']} s ({stats['samples_per_s']:.2f} samples/s, "
        f"peak RSS {result['peak_rss_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
