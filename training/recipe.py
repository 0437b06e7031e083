"""The training recipe's data side: how many steps, how much warm-up, and the tokenized rows.

Invariants:

* Loss lands only on assistant messages whose ``weight`` is 1 (the dataset writes exactly one per
  example: the final answer); history, system prompt, retrieved context and earlier answers are
  context with label -100. A message without a ``weight`` key trains only if it is the last
  assistant message.
* Base-replay rows (the base model's own greedy answers to general questions, mixed into every
  run) carry their labels shifted by :data:`KL_OFFSET` when ``[training] base_replay_loss = "kl"``:
  the trainer then pulls the tuned model's next-token distribution towards the base model's at
  those positions instead of training on the sampled tokens. A replay answer cut at the generation
  limit does not train its closing ``<|im_end|>`` (the base model did not stop there).
* Steps are sized to the data: ``max(min_steps, ceil(epochs * examples / (batch * accum)))``
  unless ``max_steps`` is set; warm-up is ``warmup_steps`` if set, else ``warmup_ratio`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.config import TrainingConfig

KL_OFFSET = 1 << 20  # replay label ids are shifted by this: "distil from the base model here"
IGNORE = -100


@dataclass(frozen=True)
class Plan:
    """The optimizer schedule of one run."""

    steps: int
    warmup: int
    examples: int  # taught examples (corrections, 👍 answers)
    replay: int  # base-replay rows mixed in


def plan(t: TrainingConfig, examples: int, replay: int) -> Plan:
    """Steps sized to the taught examples (a small day still gets ``min_steps``)."""
    if t.max_steps > 0:
        steps = t.max_steps
    else:
        per_step = t.batch_size * t.grad_accum
        steps = max(t.min_steps, math.ceil(t.epochs * max(examples, 1) / per_step))
    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * steps)
    return Plan(steps=steps, warmup=min(warmup, max(steps - 1, 0)), examples=examples,
                replay=replay)


def trained_flags(messages: Sequence[dict[str, Any]]) -> list[bool]:
    """Per assistant message (in order): does it carry loss?"""
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if any("weight" in messages[i] for i in assistants):
        return [bool(int(messages[i].get("weight", 0))) for i in assistants]
    return [i == assistants[-1] for i in assistants] if assistants else []


def _spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of 1 in an assistant mask: one per assistant message."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


def tokenize(tokenizer: Any, template: str, messages: Sequence[dict[str, Any]], *,
             max_len: int | None = None, replay: bool = False, kl: bool = False,
             truncated: bool = False) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` for one conversation (see the module docstring)."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    out = tokenizer.apply_chat_template(plain, chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    spans = _spans(mask)
    flags = trained_flags(messages)
    if len(spans) != len(flags):
        raise ValueError(f"the chat template marked {len(spans)} assistant spans for "
                         f"{len(flags)} assistant messages")
    labels = [IGNORE] * len(ids)
    for (a, b), on in zip(spans, flags, strict=True):
        if on:
            labels[a:b] = ids[a:b]
    if replay and truncated and spans:
        labels[spans[-1][1] - 1] = IGNORE  # the <|im_end|> after an answer cut at the limit
    if kl:
        labels = [x + KL_OFFSET if x != IGNORE else x for x in labels]
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels}
