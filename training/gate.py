"""The evaluation gate: candidate vs reference (the active adapter, or the base model).

(a) held-out logged conversations: loss and token accuracy on assistant tokens only;
(b) probes (``training.probes``): does the greedy answer contain the expected text;
(c) a shipped regression set of general questions (``training/regression/*.jsonl``), scored as the
    loss of the base model's own greedy answers, so general ability does not collapse.

:func:`score_all` runs inside the training child process (it already holds the model; torch is
imported lazily); :func:`decide` is the pure promotion rule the cycle applies to its scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.files import write_atomic
from llm.base import ChatMessage
from training.job import RegressionSet, TrainJob, progress
from training.probes import Probe

REGRESSION_DIR = Path(__file__).resolve().parent / "regression"


# ---- the regression set ------------------------------------------------------------------
def load_regression(directory: Path = REGRESSION_DIR) -> list[str]:
    questions: list[str] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                questions.append(str(json.loads(line)["question"]))
    return questions


def regression_key(model_path: str, system_prompt: str, questions: Sequence[str],
                   max_new_tokens: int) -> str:
    blob = json.dumps([model_path, system_prompt, list(questions), max_new_tokens])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def contains_expected(answer: str, expected: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())
    return norm(expected) in norm(answer)


# ---- scoring (inside the child process; torch is imported lazily) --------------------------------
def assistant_scores(model: Any, tokenizer: Any, template: str,
                     conversations: Sequence[Sequence[dict[str, str]]],
                     max_len: int = 2048) -> dict[str, float]:
    """Mean loss and next-token accuracy over assistant tokens (trl's mask) of ``conversations``."""
    import torch

    total_loss, total_correct, total_tokens = 0.0, 0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), _autocast(device):
        for conv in conversations:
            out = tokenizer.apply_chat_template(list(conv), chat_template=template, tokenize=True,
                                                return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([out["input_ids"][:max_len]], device=device)
            mask = torch.tensor(out["assistant_masks"][:max_len], device=device).bool()
            if ids.shape[1] < 2 or not bool(mask[1:].any()):
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            sel = mask[1:]
            loss = torch.nn.functional.cross_entropy(logits[sel], targets[sel], reduction="sum")
            total_loss += float(loss)
            total_correct += int((logits[sel].argmax(-1) == targets[sel]).sum())
            total_tokens += int(sel.sum())
    if total_tokens == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "tokens": 0}
    return {"loss": total_loss / total_tokens, "accuracy": total_correct / total_tokens,
            "tokens": total_tokens}


def _autocast(device: Any) -> Any:
    import torch

    if device.type == "cpu" and bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX") or
                    torch.cpu._is_avx512_bf16_supported())  # type: ignore[attr-defined]
    except Exception:
        return False


def generate_greedy(model: Any, tokenizer: Any, template: str,
                    prompts: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 48,
                    repetition_penalty: float = 1.2, batch_size: int = 8) -> list[str]:
    """Greedy answers for chat prompts (left-padded batches)."""
    import torch

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    model.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(list(p), chat_template=template, tokenize=False,
                                                   add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad(), _autocast(device):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     repetition_penalty=repetition_penalty,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                     eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")
                                     if "<|im_end|>" in tokenizer.get_vocab()
                                     else tokenizer.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1]:]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = old_side
    return answers


def probe_scores(model: Any, tokenizer: Any, template: str, system_prompt: str,
                 probes: Sequence[Probe], max_new_tokens: int = 40) -> dict[str, Any]:
    """Probe pass count (greedy answer contains the expected text) and loss of the expected text."""
    if not probes:
        return {"total": 0, "passed": 0, "loss": None, "answers": []}
    prompts = [[{"role": "system", "content": system_prompt},
                {"role": "user", "content": p.question}] for p in probes]
    answers = generate_greedy(model, tokenizer, template, prompts, max_new_tokens)
    passed = [contains_expected(a, p.expected) for a, p in zip(answers, probes, strict=True)]
    convs = [[*pr, {"role": "assistant", "content": p.expected}]
             for pr, p in zip(prompts, probes, strict=True)]
    scores = assistant_scores(model, tokenizer, template, convs)
    return {"total": len(probes), "passed": sum(passed), "loss": scores["loss"],
            "answers": [{"question": p.question, "answer": a, "passed": ok}
                        for p, a, ok in zip(probes, answers, passed, strict=True)]}


def score_all(job: TrainJob, model: Any, tokenizer: Any, template: str) -> dict[str, Any]:
    """Score the trained adapter ("default") and the reference on (a), (b) and (c).

    The reference is the job's reference adapter, loaded beside the candidate, or the base model
    (the candidate's adapter disabled). The regression set compares the candidate with the base
    model's own answers, generated once per :func:`regression_key` and cached.
    """
    heldout = job.eval_conversations()
    ref = job.reference_adapter
    if ref:
        model.load_adapter(ref, adapter_name="reference")
    scores: dict[str, Any] = {"heldout": {}, "probes": {}, "regression": {},
                              "reference": job.reference_version or "base"}

    def score_as(who: str) -> None:
        scores["heldout"][who] = assistant_scores(model, tokenizer, template, heldout)
        scores["probes"][who] = probe_scores(model, tokenizer, template, job.system_prompt,
                                             job.probes)

    progress(f"evaluating candidate on {len(heldout)} held-out, {len(job.probes)} probes")
    model.set_adapter("default")
    score_as("candidate")
    if ref:
        model.set_adapter("reference")
        score_as("reference")
        model.set_adapter("default")
    else:
        with model.disable_adapter():
            score_as("reference")
    if job.regression is not None and job.regression.questions:
        convs = _regression_conversations(job.regression, job.system_prompt, model, tokenizer,
                                          template)
        with model.disable_adapter():
            scores["regression"]["base"] = assistant_scores(model, tokenizer, template, convs)
        scores["regression"]["candidate"] = assistant_scores(model, tokenizer, template, convs)
    return scores


def _regression_conversations(reg: RegressionSet, system_prompt: str, model: Any, tokenizer: Any,
                              template: str) -> list[list[ChatMessage]]:
    """The regression questions with the base model's greedy answers (from the cache if its key
    matches, else generated with the adapter disabled and cached)."""
    prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}]
               for q in reg.questions]
    cache = Path(reg.cache)
    base_answers: list[str] | None = None
    if cache.exists():
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("key") == reg.key:
            base_answers = list(data["answers"])
    if base_answers is None:
        progress(f"generating base answers for {len(reg.questions)} regression questions (once)")
        with model.disable_adapter():
            base_answers = generate_greedy(model, tokenizer, template, prompts,
                                           reg.max_new_tokens)
        write_atomic(cache, json.dumps({"key": reg.key, "answers": base_answers},
                                       ensure_ascii=False, indent=1))
    return [[*p, {"role": "assistant", "content": a}]
            for p, a in zip(prompts, base_answers, strict=True) if a.strip()]


# ---- the gate rule ----------------------------------------------------------------------------
@dataclass
class Decision:
    promote: bool
    reasons: list[str]


def decide(scores: dict[str, Any], tolerance: float) -> Decision:
    """Promote only if (a) held-out loss improves, (b) no fewer probes pass and (c) the regression
    set degrades by at most ``tolerance`` (relative increase of loss on the base answers).

    ``scores`` = {"heldout": {"candidate": {loss, accuracy}, "reference": {...}},
    "probes": {"candidate": {...}, "reference": {...}},
    "regression": {"candidate": {loss}, "base": {loss}}}.
    """
    reasons: list[str] = []
    ok = True
    held = scores.get("heldout") or {}
    c, r = held.get("candidate") or {}, held.get("reference") or {}
    c_loss, r_loss = c.get("loss"), r.get("loss")
    if c_loss is None or r_loss is None or c_loss != c_loss or r_loss != r_loss:
        ok = False
        reasons.append("no held-out examples to compare on (need more data)")
    elif c_loss < r_loss:
        reasons.append(f"held-out loss improved {r_loss:.4f} -> {c_loss:.4f} "
                       f"(accuracy {r.get('accuracy', 0):.3f} -> {c.get('accuracy', 0):.3f})")
    else:
        ok = False
        reasons.append(f"held-out loss did not improve ({r_loss:.4f} -> {c_loss:.4f})")
    probes = scores.get("probes") or {}
    pc, pr = probes.get("candidate") or {}, probes.get("reference") or {}
    if pc.get("total"):
        # The loss of the bare expected text is reported but not gated on: it falls when the
        # model merely learns shorter answers, even while its greedy answers turn wrong.
        if pc["passed"] < pr.get("passed", 0):
            ok = False
            reasons.append(f"probes got worse: {pr.get('passed')} -> {pc['passed']} of "
                           f"{pc['total']} passed")
        else:
            reasons.append(f"probes not worse: {pr.get('passed', 0)} -> {pc['passed']} of "
                           f"{pc['total']} passed")
    reg = scores.get("regression") or {}
    rc, rb = reg.get("candidate") or {}, reg.get("base") or {}
    if rc.get("loss") is not None and rb.get("loss") is not None:
        change = (rc["loss"] - rb["loss"]) / max(rb["loss"], 1e-6)
        if change > tolerance:
            ok = False
            reasons.append(f"general ability dropped: regression loss {rb['loss']:.4f} -> "
                           f"{rc['loss']:.4f} (+{change:.1%} > tolerance {tolerance:.0%})")
        else:
            reasons.append(f"regression set within tolerance ({change:+.1%}, limit "
                           f"{tolerance:.0%})")
    return Decision(ok, reasons)
