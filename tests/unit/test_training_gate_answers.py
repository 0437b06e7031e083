"""The gate's behaviour check compares like with like (real embedded model, a few short answers).

A candidate that computes exactly what the base computes (a fresh LoRA adapter: B = 0) must come out
with 0 changed answers, through the gate's own path (cached base answers vs the candidate's) and
through the bench's (the saved adapter loaded into a fresh model); base answers cached under
another decode path are not reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training import behaviour
from training.gate import _answers, _base_answers, decode_key, generate_greedy
from training.job import RegressionSet
from training.template import training_template

QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?",
             "Name a fruit that is yellow.")
SYSTEM = "You are a helpful assistant. Answer briefly."
TOKENS = 16


@pytest.fixture(scope="module")
def lora(embedded_model_dir: Path) -> tuple[Any, Any, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                            task_type="CAUSAL_LM"))
    return model, tok, training_template(tok)


def test_an_unchanged_candidate_has_no_changed_answer_in_gate_or_bench(
        lora: tuple[Any, Any, str], embedded_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok, template = lora
    reg = RegressionSet(questions=QUESTIONS, key="k", cache=str(tmp_path / "base.json"),
                        max_new_tokens=TOKENS)
    reference = _base_answers(reg, SYSTEM, model, tok, template)
    candidate = _answers(model, tok, template, SYSTEM, QUESTIONS, "default", TOKENS)
    assert candidate == reference and all(reference)
    summary = behaviour.summary(behaviour.compare(QUESTIONS, reference, candidate))
    assert summary["changed"] == 0 and summary["mean_similarity"] == 1.0
    # the bench's path: the saved adapter in a freshly loaded model gives the gate's answers
    model.save_pretrained(tmp_path / "adapter")
    fresh = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(embedded_model_dir), dtype=torch.bfloat16),
        str(tmp_path / "adapter"))
    prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
               for q in QUESTIONS]
    assert generate_greedy(fresh, tok, template, prompts, TOKENS) == candidate


def test_base_answers_cached_under_another_decode_path_are_generated_again(
        lora: tuple[Any, Any, str], tmp_path: Path) -> None:
    import torch

    model, tok, template = lora
    cache = tmp_path / "base.json"
    reg = RegressionSet(questions=QUESTIONS, key="k", cache=str(cache), max_new_tokens=TOKENS)
    stale = ["stale answer from another torch"] * len(QUESTIONS)
    cache.write_text(json.dumps({"key": "k", "answers": stale}))  # key without a decode path
    fresh = _base_answers(reg, SYSTEM, model, tok, template)
    assert fresh != stale and all(fresh)
    assert json.loads(cache.read_text())["key"] == decode_key("k", model)
    assert _base_answers(reg, SYSTEM, model, tok, template) == fresh  # same path: reused
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # another thread count is another decode path
        assert decode_key("k", model) != json.loads(cache.read_text())["key"]
    finally:
        torch.set_num_threads(threads)
