"""The recipe's data side: steps sized to the data, and labels only where loss belongs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.config import TrainingConfig
from training.recipe import IGNORE, KL_OFFSET, plan, tokenize
from training.template import CHATML_TEMPLATE


def test_a_small_day_gets_min_steps_and_a_warmup_share() -> None:
    t = TrainingConfig()
    p = plan(t, examples=24, replay=96)
    assert (p.steps, p.warmup) == (60, 6)
    big = plan(t, examples=400, replay=96)
    assert big.steps == 300 and big.warmup == 30  # 3 epochs of 400 at batch 4
    assert plan(TrainingConfig(max_steps=7, warmup_steps=2), 24, 0).steps == 7
    assert plan(TrainingConfig(max_steps=7, warmup_steps=2), 24, 0).warmup == 2


@pytest.fixture(scope="module")
def tok(embedded_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_dir))


CONV = [{"role": "system", "content": "Be brief.", "weight": 0},
        {"role": "user", "content": "What is 2+2?", "weight": 0},
        {"role": "assistant", "content": "Five, surely.", "weight": 0},
        {"role": "user", "content": "Are you sure?", "weight": 0},
        {"role": "assistant", "content": "Sorry: it is 4.", "weight": 1}]


def _trained_text(tok: Any, row: dict[str, list[int]], offset: int = 0) -> str:
    return str(tok.decode([x - offset for x in row["labels"] if x != IGNORE]))


def test_only_the_weighted_final_answer_carries_loss(tok: Any) -> None:
    row = tokenize(tok, CHATML_TEMPLATE, CONV)
    assert len(row["labels"]) == len(row["input_ids"])
    assert _trained_text(tok, row) == "Sorry: it is 4.<|im_end|>"
    # without weights (older files) only the last assistant message trains
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in CONV]
    assert tokenize(tok, CHATML_TEMPLATE, plain)["labels"] == row["labels"]


def test_replay_rows_are_marked_for_kl_and_a_cut_answer_does_not_learn_to_stop(tok: Any) -> None:
    conv = [{k: v for k, v in m.items() if k != "weight"} for m in CONV[:3]]
    kl = tokenize(tok, CHATML_TEMPLATE, conv, replay=True, kl=True, truncated=True)
    assert all(x >= KL_OFFSET for x in kl["labels"] if x != IGNORE)
    assert _trained_text(tok, kl, KL_OFFSET) == "Five, surely."
    sft = tokenize(tok, CHATML_TEMPLATE, conv, replay=True, kl=False, truncated=False)
    assert _trained_text(tok, sft) == "Five, surely.<|im_end|>"


def test_an_unknown_method_is_a_config_error_naming_the_allowed_ones() -> None:
    from bot.config import parse_config
    from bot.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config('[training]\nmethod = "ppo"\n')
    assert all(m in str(err.value) for m in ("'sft'", "'kto'", "'sft+dpo'"))
