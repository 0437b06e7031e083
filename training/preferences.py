"""Preference data for ``[training] method = "kto" | "sft+dpo"`` (parent side, no torch).

* ``kto``: unpaired rows ``{"prompt": [...], "completion": [answer], "label": bool}`` as trl's
  KTOTrainer reads them: desirable = the run's training examples (👍 answers, corrections),
  undesirable = 👎'd answers and the answers a correction replaced. A run needs both kinds.
* ``sft+dpo``: after the SFT stage, pairs ``{"prompt", "chosen", "rejected"}`` for DPOTrainer:
  chosen = the correction, rejected = the answer it corrects. A run needs at least one pair.

Prompts are the examples' rendered messages without the final answer (as served: system prompt,
retrieved context, own history), so preference rows see exactly what SFT rows see. Held-out
conversations stay out of both (the caller passes only training-side examples).

Blind A/B votes from the console (``<storage>/preferences/pairs.jsonl``, :func:`read_votes`) are
preference data too: chosen = the voted answer, rejected = the other, the prompt = the messages
both answers were generated from (the question). For ``kto`` they add one desirable and one
undesirable row, for ``sft+dpo`` one pair. A vote whose two answers are equal or empty, or (with
``[privacy] scrub_pii``) whose answers hold personal data, is skipped; its question is scrubbed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.files import write_atomic
from training.dataset import DatasetReport, Example
from training.scrub import scrub

log = logging.getLogger("nightowl.training")
VOTES_FILE = Path("preferences") / "pairs.jsonl"  # under the storage dir (bot.console.compare)


@dataclass(frozen=True)
class Vote:
    """One blind A/B vote: the prompt both answers came from, the preferred and the other."""

    prompt: tuple[tuple[str, str], ...]  # (role, content) of each message, answer excluded
    chosen: str
    rejected: str

    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt]


def _vote(record: Any, system_prompt: str, scrub_pii: bool) -> Vote | None:
    if not isinstance(record, dict):
        return None
    chosen = str(record.get("chosen", "")).strip()
    rejected = str(record.get("rejected", "")).strip()
    if not chosen or not rejected or chosen == rejected:
        return None  # no preference to learn from
    if scrub_pii and (scrub(chosen).counts or scrub(rejected).counts):
        return None  # as in the dataset: never learn to print personal data
    messages = record.get("messages")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in messages)):
        question = str(record.get("prompt", "")).strip()
        if not question:
            return None
        messages = [{"role": "system", "content": system_prompt},
                    {"role": "user", "content": question}]
    prompt = tuple((m["role"], scrub(m["content"]).text if scrub_pii and m["role"] == "user"
                    else m["content"]) for m in messages)
    return Vote(prompt, chosen, rejected)


def read_votes(storage: Path, system_prompt: str, scrub_pii: bool = True) -> list[Vote]:
    """The console's blind A/B votes (none if there is no file); unreadable lines are skipped."""
    path = Path(storage) / VOTES_FILE
    if not path.exists():
        return []
    votes, bad = [], 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                vote = _vote(json.loads(line), system_prompt, scrub_pii)
            except json.JSONDecodeError:
                bad += 1
                continue
            if vote is not None:
                votes.append(vote)
    if bad:
        log.warning("%s: %d unreadable line(s) skipped", path, bad)
    return votes


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _prompt(ex: Example) -> list[dict[str, str]]:
    return [dict(m) for m in ex.messages[:-1]]


def _meta(ex: Example, row: dict[str, Any]) -> dict[str, Any]:
    """The row with the example's ids (``meta``, for /forget and retention; trainers drop it)."""
    return {**row, "meta": ex.ids.meta()} if ex.ids is not None else row


def kto_rows(train: Sequence[Example], disliked: Sequence[Example],
             votes: Sequence[Vote] = ()) -> list[dict[str, Any]]:
    rows = [_meta(e, {"prompt": _prompt(e), "completion": _answer(e.messages[-1]["content"]),
                      "label": True}) for e in train]
    rows += [_meta(e, {"prompt": _prompt(e), "completion": _answer(e.rejected),
                       "label": False}) for e in train if e.rejected]
    rows += [_meta(e, {"prompt": _prompt(e), "completion": _answer(e.messages[-1]["content"]),
                       "label": False}) for e in disliked]
    for v in votes:
        rows += [{"prompt": v.prompt_messages(), "completion": _answer(v.chosen), "label": True},
                 {"prompt": v.prompt_messages(), "completion": _answer(v.rejected),
                  "label": False}]
    return rows


def dpo_rows(train: Sequence[Example], votes: Sequence[Vote] = ()) -> list[dict[str, Any]]:
    rows = [_meta(e, {"prompt": _prompt(e), "chosen": _answer(e.messages[-1]["content"]),
                      "rejected": _answer(e.rejected)}) for e in train if e.rejected]
    rows += [{"prompt": v.prompt_messages(), "chosen": _answer(v.chosen),
              "rejected": _answer(v.rejected)} for v in votes]
    return rows


def preference_rows(method: str, train: Sequence[Example], disliked: Sequence[Example],
                    votes: Sequence[Vote] = (), report: DatasetReport | None = None
                    ) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, None) or ([], why the run is skipped) for ``method``; "sft" has no rows.
    ``votes`` (:func:`read_votes`) join the rows; ``report`` counts the votes used."""
    if report is not None:
        report.ab_votes = len(votes) if method in ("kto", "sft+dpo") else 0
    if method == "kto":
        rows = kto_rows(train, disliked, votes)
        good = sum(r["label"] for r in rows)
        bad = len(rows) - good
        if not good or not bad:
            return [], (f"skipped: [training] method = \"kto\" needs both desirable answers (👍, "
                        f"corrections) and undesirable ones (👎, corrected answers); this run "
                        f"has {good} desirable and {bad} undesirable. Collect both, or use "
                        "method = \"sft\".")
        return rows, None
    if method == "sft+dpo":
        rows = dpo_rows(train, votes)
        if not rows:
            return [], ("skipped: [training] method = \"sft+dpo\" needs pairs (a correction and "
                        "the answer it corrects, or a blind A/B vote in the console); this run "
                        "has none. /correct some answers, or use method = \"sft\".")
        return rows, None
    return [], None


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
