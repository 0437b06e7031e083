"""Preference data for ``[training] method = "kto" | "sft+dpo"`` (parent side, no torch).

* ``kto``: unpaired rows ``{"prompt": [...], "completion": [answer], "label": bool}`` as trl's
  KTOTrainer reads them: desirable = the run's training examples (👍 answers, corrections),
  undesirable = 👎'd answers and the answers a correction replaced. A run needs both kinds.
* ``sft+dpo``: after the SFT stage, pairs ``{"prompt", "chosen", "rejected"}`` for DPOTrainer:
  chosen = the correction, rejected = the answer it corrects. A run needs at least one pair.

Prompts are the examples' rendered messages without the final answer (as served: system prompt,
retrieved context, own history), so preference rows see exactly what SFT rows see. Held-out
conversations stay out of both (the caller passes only training-side examples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.files import write_atomic
from training.dataset import Example


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _prompt(ex: Example) -> list[dict[str, str]]:
    return [dict(m) for m in ex.messages[:-1]]


def kto_rows(train: Sequence[Example], disliked: Sequence[Example]) -> list[dict[str, Any]]:
    rows = [{"prompt": _prompt(e), "completion": _answer(e.messages[-1]["content"]),
             "label": True} for e in train]
    rows += [{"prompt": _prompt(e), "completion": _answer(e.rejected), "label": False}
             for e in train if e.rejected]
    rows += [{"prompt": _prompt(e), "completion": _answer(e.messages[-1]["content"]),
              "label": False} for e in disliked]
    return rows


def dpo_rows(train: Sequence[Example]) -> list[dict[str, Any]]:
    return [{"prompt": _prompt(e), "chosen": _answer(e.messages[-1]["content"]),
             "rejected": _answer(e.rejected)} for e in train if e.rejected]


def preference_rows(method: str, train: Sequence[Example],
                    disliked: Sequence[Example]) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, None) or ([], why the run is skipped) for ``method``; "sft" has no rows."""
    if method == "kto":
        rows = kto_rows(train, disliked)
        good = sum(r["label"] for r in rows)
        bad = len(rows) - good
        if not good or not bad:
            return [], (f"skipped: [training] method = \"kto\" needs both desirable answers (👍, "
                        f"corrections) and undesirable ones (👎, corrected answers); this run "
                        f"has {good} desirable and {bad} undesirable. Collect both, or use "
                        "method = \"sft\".")
        return rows, None
    if method == "sft+dpo":
        rows = dpo_rows(train)
        if not rows:
            return [], ("skipped: [training] method = \"sft+dpo\" needs pairs (a correction and "
                        "the answer it corrects); this run has none. /correct some answers, or "
                        "use method = \"sft\".")
        return rows, None
    return [], None


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
