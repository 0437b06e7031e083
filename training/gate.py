"""The evaluation gate: candidate vs reference (the active adapter, or the base model).

(a) held-out logged conversations: loss and token accuracy on assistant tokens only;
(b) probes (``training.probes``): does the greedy answer contain the expected text;
(c) a shipped regression set of general questions (``training/regression/*.jsonl``), scored as the
    loss of the base model's own greedy answers, so general ability does not collapse;
(d) behaviour: the candidate's greedy answers to the regression questions against the reference's
    (:mod:`training.behaviour`: how many changed, whether a taught name or number leaks into
    them), and the same comparison on a sample of recent real questions, listed in the report.
    Reference and candidate answers come from one decode path (the same process, thread count,
    dtype and batches): cached base answers are keyed by it, so numeric noise of another path is
    never counted as a changed answer.

Held-out loss counts only the tokens that would train (each example's final answer).

:func:`score_all` runs inside the training child process (it already holds the model; torch is
imported lazily); :func:`decide` is the pure promotion rule the cycle applies to its scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.base import ChatMessage
from training import behaviour
from training.job import RegressionSet, TrainJob, progress
from training.probes import Probe
from training.recipe import IGNORE, tokenize
from training.replay import REGRESSION_DIR, answers_key, cached_answers, load_questions


def load_regression(directory: Path = REGRESSION_DIR) -> list[str]:
    return load_questions(directory)


def regression_key(model_path: str, system_prompt: str, questions: Sequence[str],
                   max_new_tokens: int) -> str:
    return answers_key(model_path, system_prompt, questions, max_new_tokens)


def contains_expected(answer: str, expected: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())
    return norm(expected) in norm(answer)


# ---- scoring (inside the child process; torch is imported lazily) --------------------------------
def assistant_scores(model: Any, tokenizer: Any, template: str,
                     conversations: Sequence[Sequence[dict[str, Any]]],
                     max_len: int = 2048) -> dict[str, float]:
    """Mean loss and next-token accuracy over the trained tokens (``training.recipe``: each
    conversation's weighted, else final, assistant message) of ``conversations``."""
    import torch

    total_loss, total_correct, total_tokens = 0.0, 0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), _autocast(device):
        for conv in conversations:
            row = tokenize(tokenizer, template, conv, max_len=max_len)
            ids = torch.tensor([row["input_ids"]], device=device)
            sel = torch.tensor(row["labels"][1:], device=device) != IGNORE
            if ids.shape[1] < 2 or not bool(sel.any()):
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
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


GEN_BATCH = 8
REPETITION_PENALTY = 1.2


def decode_path(model: Any) -> str:
    """What a greedy answer depends on besides the weights and the prompt: torch, device, weight
    dtype, autocast, thread count, batch size, repetition penalty. Answers generated under another
    decode path differ by numeric noise (a near-tie flips a token and the rest diverges), so cached
    base answers are keyed by it (:func:`decode_key`)."""
    import torch

    param = next(model.parameters())
    return (f"torch {torch.__version__}, {param.device.type}, {param.dtype}, "
            f"bf16 autocast {bf16_supported()}, {torch.get_num_threads()} threads, "
            f"batch {GEN_BATCH}, repetition penalty {REPETITION_PENALTY}")


def decode_key(key: str, model: Any) -> str:
    """``key`` (model, prompt, questions, length) extended by :func:`decode_path`."""
    return f"{key}-{hashlib.sha1(decode_path(model).encode()).hexdigest()[:8]}"


def generate_greedy(model: Any, tokenizer: Any, template: str,
                    prompts: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 48,
                    repetition_penalty: float = REPETITION_PENALTY,
                    batch_size: int = GEN_BATCH) -> list[str]:
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


def _prompts(system_prompt: str, questions: Sequence[str]) -> list[list[ChatMessage]]:
    return [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}]
            for q in questions]


def taught_answers(conversations: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
    """The trained (weighted, else final) assistant texts of the run's examples."""
    from training.recipe import trained_flags

    out = []
    for conv in conversations:
        assistants = [m for m in conv if m.get("role") == "assistant"]
        out += [m["content"] for m, on in zip(assistants, trained_flags(conv), strict=True)
                if on]
    return out


def score_all(job: TrainJob, model: Any, tokenizer: Any, template: str) -> dict[str, Any]:
    """Score the trained adapter ("default") and the reference on (a)-(d).

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
    reg = job.regression
    if reg is not None and reg.questions:
        base_answers = _base_answers(reg, job.system_prompt, model, tokenizer, template)
        convs = [[*p, {"role": "assistant", "content": a}]
                 for p, a in zip(_prompts(job.system_prompt, reg.questions), base_answers,
                                 strict=True) if a.strip()]
        with model.disable_adapter():
            scores["regression"]["base"] = assistant_scores(model, tokenizer, template, convs)
        scores["regression"]["candidate"] = assistant_scores(model, tokenizer, template, convs)
        progress(f"comparing answers to {len(reg.questions)} regression and "
                 f"{len(job.report_questions)} recent questions")
        ref_answers = base_answers if not ref else \
            _answers(model, tokenizer, template, job.system_prompt, reg.questions, "reference",
                     reg.max_new_tokens)
        cand = _answers(model, tokenizer, template, job.system_prompt, reg.questions, "default",
                        reg.max_new_tokens)
        terms = behaviour.taught_terms(taught_answers(job.train_conversations()),
                                       [*reg.questions, *ref_answers])
        rows = behaviour.compare(reg.questions, ref_answers, cand, terms)
        scores["behaviour"] = behaviour.summary(rows, terms)
        if job.report_questions:
            qs = job.report_questions
            mx = reg.max_new_tokens
            before = _answers(model, tokenizer, template, job.system_prompt, qs,
                              "reference" if ref else None, mx)
            after = _answers(model, tokenizer, template, job.system_prompt, qs, "default", mx)
            scores["recent"] = behaviour.summary(behaviour.compare(qs, before, after, terms))
    return scores


def _answers(model: Any, tokenizer: Any, template: str, system_prompt: str,
             questions: Sequence[str], adapter: str | None, max_new_tokens: int) -> list[str]:
    """Greedy answers with ``adapter`` active (None = the base model)."""
    prompts = _prompts(system_prompt, questions)
    if adapter is None:
        with model.disable_adapter():
            return generate_greedy(model, tokenizer, template, prompts, max_new_tokens)
    model.set_adapter(adapter)
    try:
        return generate_greedy(model, tokenizer, template, prompts, max_new_tokens)
    finally:
        model.set_adapter("default")


def _base_answers(reg: RegressionSet, system_prompt: str, model: Any, tokenizer: Any,
                  template: str) -> list[str]:
    """The base model's greedy answers to the regression questions, cached per key and decode
    path (answers cached under another thread count or torch are generated again, so the
    candidate is never compared with the base through different numerics)."""
    def generate() -> list[str]:
        progress(f"generating base answers for {len(reg.questions)} regression questions (once)")
        return _answers(model, tokenizer, template, system_prompt, reg.questions, None,
                        reg.max_new_tokens)
    return cached_answers(Path(reg.cache), decode_key(reg.key, model), generate)


# ---- the gate rule ----------------------------------------------------------------------------
@dataclass
class Decision:
    promote: bool
    reasons: list[str]


def decide(scores: dict[str, Any], tolerance: float, max_changed: float = 1.0) -> Decision:
    """Promote only if (a) held-out loss improves, (b) no fewer probes pass, (c) the regression
    set degrades by at most ``tolerance`` (relative increase of loss on the base answers; a loss
    that cannot be measured, NaN, fails), and
    (d) at most ``max_changed`` of the regression answers changed and none leaks a taught term,
    whatever the losses say.

    ``scores`` = {"heldout": {"candidate": {loss, accuracy}, "reference": {...}},
    "probes": {"candidate": {...}, "reference": {...}},
    "regression": {"candidate": {loss}, "base": {loss}},
    "behaviour": {total, changed, leaks, rows: [{question, candidate, leaked, ...}]}}.
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
        if not math.isfinite(change):  # NaN > tolerance is False: it must not pass
            ok = False
            reasons.append(f"general ability not measurable: regression loss {rb['loss']} -> "
                           f"{rc['loss']} (no base answer had text to score); not promoted. "
                           "Check that the base model answers, then delete "
                           "runs/regression-base.json so its answers are generated again")
        elif change > tolerance:
            ok = False
            reasons.append(f"general ability dropped: regression loss {rb['loss']:.4f} -> "
                           f"{rc['loss']:.4f} (+{change:.1%} > tolerance {tolerance:.0%})")
        else:
            reasons.append(f"regression set within tolerance ({change:+.1%}, limit "
                           f"{tolerance:.0%})")
    ok = _behaviour(scores.get("behaviour") or {}, max_changed, reasons) and ok
    return Decision(ok, reasons)


def _behaviour(b: dict[str, Any], max_changed: float, reasons: list[str]) -> bool:
    total = int(b.get("total") or 0)
    if not total:
        return True
    ok = True
    leaks = [row for row in b.get("rows", []) if row.get("leaked")]
    if leaks:
        ok = False
        shown = "; ".join(f"{row['question']!r} -> {row['candidate'][:80]!r} "
                          f"({', '.join(row['leaked'])})" for row in leaks[:3])
        reasons.append(f"taught answers leak into {len(leaks)} of {total} unrelated questions: "
                       f"{shown}")
    n = int(b.get("changed") or 0)
    if n > max_changed * total:
        ok = False
        reasons.append(f"answers collapsed: {n} of {total} general answers changed (more than "
                       f"[training] max_changed {max_changed:.0%})")
    else:
        reasons.append(f"general answers kept: {n} of {total} changed (limit "
                       f"{max_changed:.0%})")
    return ok
