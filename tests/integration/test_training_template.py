"""The training template renders like SmolLM2's stock template and masks exactly the answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.template import CHATML_TEMPLATE, training_template

CONVS = [
    [{"role": "system", "content": "You are NightOwl.\n\nSources:\n[1] guide.md\nRetrain nightly."},
     {"role": "user", "content": "How do I retrain?"},
     {"role": "assistant", "content": "Run `nightowl train` [1]."},
     {"role": "user", "content": "And roll back?"},
     {"role": "assistant", "content": "Use /rollback v0001.\nThat's it."}],
    [{"role": "user", "content": "Olá, tudo bem? 😀"},
     {"role": "assistant", "content": "Tudo ótimo!"}],
]


def assistant_mask(tokenizer: Any, messages: list[dict[str, str]], template: str) -> tuple[
        list[int], list[int]]:
    """Token ids and the 0/1 assistant mask trl computes for ``messages``."""
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("gen", [False, True])
def test_same_text_as_the_stock_template(tokenizer, conv, gen) -> None:  # type: ignore[no-untyped-def]
    msgs = conv[:-1] if gen else conv
    ours = tokenizer.apply_chat_template(msgs, chat_template=CHATML_TEMPLATE, tokenize=False,
                                         add_generation_prompt=gen)
    stock = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert ours == stock
    assert training_template(tokenizer) == CHATML_TEMPLATE


@pytest.mark.parametrize("conv", CONVS)
def test_assistant_mask_covers_exactly_the_assistant_tokens(tokenizer, conv) -> None:  # type: ignore[no-untyped-def]
    ids, mask = assistant_mask(tokenizer, conv, CHATML_TEMPLATE)
    assert len(ids) == len(mask)
    # rebuild the expected mask by tokenizing each rendered piece separately
    expected_ids: list[int] = []
    expected_mask: list[int] = []
    if conv[0]["role"] != "system":
        rendered = tokenizer.apply_chat_template([conv[0]], tokenize=False)
        piece = rendered.split("<|im_start|>user")[0]
        enc = tokenizer(piece, add_special_tokens=False)["input_ids"]
        expected_ids += enc
        expected_mask += [0] * len(enc)
    for m in conv:
        if m["role"] == "assistant":
            parts = [("<|im_start|>assistant\n", 0), (m["content"] + "<|im_end|>", 1), ("\n", 0)]
        else:
            parts = [(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", 0)]
        for text, flag in parts:
            enc = tokenizer(text, add_special_tokens=False)["input_ids"]
            expected_ids += enc
            expected_mask += [flag] * len(enc)
    assert ids == expected_ids
    assert mask == expected_mask
    answers = [m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant"]
    assert tokenizer.decode([i for i, f in zip(ids, mask, strict=True) if f]) == "".join(answers)
    # the end-of-turn token of every answer is trained (the model learns to stop)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for i, f in zip(ids, mask, strict=True) if f and i == end) == len(answers)


def test_sparse_head_loss_equals_trl_loss(embedded_model_dir: Path, tmp_path: Path) -> None:
    """Our LM-head-only-where-labelled loss is trl's assistant-only loss, computed cheaper."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from training.config import TrainingConfig
    from training.job import TrainJob
    from training.recipe import plan, tokenize
    from training.sft_trainer import load_model, sft_config, sparse_head_trainer

    job = TrainJob(model_path=str(embedded_model_dir), training=TrainingConfig(max_steps=1),
                   job_dir=str(tmp_path), train_file=str(tmp_path / "train.jsonl"),
                   adapter_out=str(tmp_path / "adapter"))
    model, tok, backend = load_model(job)
    rows = [tokenize(tok, CHATML_TEMPLATE, c, max_len=512) for c in CONVS]
    data = Dataset.from_list(rows)
    args = sft_config(job, tmp_path / "out", backend, plan(job.training, len(rows), 0))
    losses = []
    for cls in (SFTTrainer, sparse_head_trainer(0.0)):
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        assert batch["input_ids"].shape[0] == 1  # padding-free: the batch is one flat row
        n = batch["labels"][:, 1:].ne(-100).sum()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(float(trainer.compute_loss(model, dict(batch), num_items_in_batch=n)))
    assert losses[0] == pytest.approx(losses[1], rel=2e-3)
