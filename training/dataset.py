"""Logged conversations -> SFT examples in conversational ``messages`` form.

Every example is rendered exactly as serving renders its prompt (``llm.prompt.build_messages`` with
the configured system prompt, the answer's stored knowledge sources formatted by
``rag.base.format_context`` and the same history window), followed by the target answer.

Policy (``[training]``): 👍 answers count; a correction replaces the answer it corrects (even a 👎
one); what an admin must approve first is :mod:`training.review`'s rule (``review``); unrated
answers count only when ``include_unrated_after_hours`` > 0 and they are older than that with no
👎. Dropped, each counted by reason in the report: 👎 without correction, unrated, non-answers and
errors, no question, too short / too long (characters), too long in tokens even after trimming
history, exact duplicates and near-duplicates; each dropped answer is also noted with its reason
(``DatasetReport.drops``, typed :class:`Drop`; the console's review page lists them).
Opted-out and forgotten users never reach this module (the store excludes / deleted them).
PII and secrets are scrubbed from questions and history before anything is written; the system
prompt and retrieved context are kept as served, and an example whose answer holds a finding is
dropped ("pii_in_answer"), so the model never learns to print a placeholder.

Each record carries ``meta`` (``training.records``: owner, message, correction ids and knowledge
sources), by which ``/forget`` and retention purge the files; trainers ignore it.

An example trains on its final answer only: the history is context (``weight`` 0 in the JSONL,
label -100 in training, :mod:`training.recipe`). Train and held-out are split by conversation, so
no turn is on both sides. Group chats: a conversation belongs to one user in one chat (the store
keys it by user and chat), so an example holds the asker's own turns and the bot's answers to them,
never another member's messages; there is no setting to widen it.
is written.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from data.files import write_atomic
from data.rows import TrainingConversation
from data.store import Store
from llm.base import ChatMessage
from llm.prompt import build_messages
from rag.base import Passage, format_context
from training.config import LearningSettings
from training.records import RecordIds
from training.review import corrected_text, correction_state, rating_state
from training.scrub import scrub

TokenCounter = Callable[[Sequence[ChatMessage]], int]


class ContentGuard(Protocol):
    """The moderation check the bot applies before answering: the same one keeps flagged
    questions and answers out of training (``check`` returns why a text is refused, or None)."""

    def check(self, text: str) -> str | None: ...


NON_ANSWERS = ("(no answer)",)
ERROR_PREFIXES = ("Sorry, something went wrong", "⏳", "Training failed")
KIND_RANK = {"correction": 0, "good": 1, "unrated": 2}
NEAR_DUP_JACCARD = 0.85
SEEN_KV_KEY = "training.trained_keys"


@dataclass
class Example:
    messages: list[ChatMessage]
    answer_id: int
    conversation_id: int
    kind: str  # "good" | "correction" | "unrated" | "disliked" (👎, only for preference methods)
    created_at: float
    key: str = ""
    rejected: str | None = None  # for a correction: the answer it corrects (scrubbed)
    ids: RecordIds | None = None  # whose data the example holds (``meta`` in the JSONL)

    def __post_init__(self) -> None:
        if not self.key:
            blob = json.dumps(self.messages, ensure_ascii=False, sort_keys=True)
            self.key = hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """The JSONL record (``messages`` format): every message carries ``weight`` 1 if it is
        trained (the final answer) else 0, as axolotl's chat_template datasets read it
        (``message_field_training: weight``); history is context only."""
        last = len(self.messages) - 1
        record: dict[str, Any] = {
            "messages": [{**m, "weight": int(i == last and m["role"] == "assistant")}
                         for i, m in enumerate(self.messages)]}
        if self.ids is not None:
            record["meta"] = self.ids.meta()
        return record


@dataclass(frozen=True)
class Drop:
    """One answer the dataset leaves out and why (``reason`` is the key counted in
    ``DatasetReport.dropped``; ``like`` is the kept answer a duplicate repeats)."""

    answer_id: int
    conversation_id: int
    reason: str
    like: int | None = None


@dataclass
class DatasetReport:
    answers_seen: int = 0
    kept: Counter[str] = field(default_factory=Counter)  # by kind
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    scrubbed: Counter[str] = field(default_factory=Counter)  # placeholders inserted, by kind
    history_trimmed: int = 0
    train: int = 0
    eval: int = 0
    new: int = 0
    replay: int = 0
    train_conversations: int = 0
    eval_conversations: int = 0
    ab_votes: int = 0  # the console's blind A/B votes in the preference data (kto, sft+dpo)
    drops: list[Drop] = field(default_factory=list)  # per answer, in the order decided

    def drop(self, reason: str, answer_id: int, conversation_id: int, counted: bool = True,
             like: int | None = None) -> None:
        """Count ``reason`` and note the answer (``counted`` False: already counted, e.g. a 👎
        answer kept for KTO that a later rule refuses)."""
        if counted:
            self.dropped[reason] += 1
            self.drops.append(Drop(answer_id, conversation_id, reason, like))

    def to_dict(self) -> dict[str, Any]:
        return {"answers_seen": self.answers_seen, "kept": sum(self.kept.values()),
                "kept_by_kind": dict(self.kept), "dropped": dict(self.dropped),
                "dropped_total": sum(self.dropped.values()), "scrubbed": dict(self.scrubbed),
                "history_trimmed": self.history_trimmed, "train": self.train, "eval": self.eval,
                "new": self.new, "replay": self.replay,
                "train_conversations": self.train_conversations,
                "eval_conversations": self.eval_conversations, "ab_votes": self.ab_votes,
                "note": "opted-out and forgotten users are excluded by the store"}

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"{sum(self.kept.values())} examples kept of {self.answers_seen} answers "
                f"({self.new} new, {self.train} train incl. {self.replay} replayed, "
                f"{self.eval} held out from {self.eval_conversations} conversations); "
                f"dropped: {drops}")


@dataclass
class Split:
    train: list[Example]
    eval: list[Example]
    new: list[Example]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _shingles(text: str) -> set[str]:
    words = _norm(text).split()
    if len(words) < 4:
        return set(words)
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / max(1, len(a | b))


def _estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(len(m["content"]) // 3 + 5 for m in messages)


def _is_non_answer(text: str) -> bool:
    t = text.strip()
    return not t or t in NON_ANSWERS or t.startswith(ERROR_PREFIXES)


def _passages(sources: list[dict[str, Any]]) -> list[Passage]:
    out = []
    for s in sources:
        if not isinstance(s, dict) or not s.get("text"):
            continue
        out.append(Passage(text=str(s["text"]), source=str(s.get("source", "")),
                           section=str(s.get("section", "")), score=float(s.get("score", 0.0)),
                           chunk_id=str(s.get("chunk_id", ""))))
    return out


def _fit(messages: list[ChatMessage], count: TokenCounter, limit: int) -> tuple[
        list[ChatMessage] | None, bool]:
    """Drop the oldest history turns until the example fits ``limit`` tokens; None if it cannot."""
    system, history, tail = messages[0], messages[1:-2], messages[-2:]
    trimmed = False
    while count([system, *history, *tail]) > limit:
        if not history:
            return None, trimmed
        history = history[2:] if len(history) >= 2 else []
        while history and history[0]["role"] != "user":
            history = history[1:]
        trimmed = True
    return [system, *history, *tail], trimmed


def build_examples(cfg: LearningSettings, conversations: Sequence[TrainingConversation], *,
                   now: float,
                   count_tokens: TokenCounter | None = None, guard: ContentGuard | None = None,
                   disliked: list[Example] | None = None
                   ) -> tuple[list[Example], DatasetReport]:
    """Apply the dataset policy to ``Store.training_conversations()`` output; ``guard`` (the
    bot's moderation) refuses examples whose question or answer it flags. If ``disliked`` is a
    list, the 👎'd answers without a correction (still counted as dropped ``thumbs_down``) are
    rendered the same way and appended to it, for the preference methods (KTO)."""
    t = cfg.training
    count = count_tokens or _estimate_tokens
    report = DatasetReport()
    candidates: list[Example] = []
    for conv in conversations:
        msgs = conv.messages
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            report.answers_seen += 1
            correction = corrected_text(m).strip()
            c_state = correction_state(m, t.review) if correction else "rejected"
            r_state = rating_state(m, t.review)
            fb = m.feedback
            if c_state == "approved":
                kind, target = "correction", correction
            elif c_state == "pending":
                report.drop("pending_review", m.id, conv.id)
                continue
            elif fb == -1:
                report.drop("thumbs_down", m.id, conv.id)
                if disliked is None or r_state != "approved":
                    continue
                kind, target = "disliked", m.text
            elif fb is None and not (t.include_unrated_after_hours > 0 and
                                     now - m.created_at >= t.include_unrated_after_hours * 3600):
                report.drop("unrated", m.id, conv.id)
                continue
            elif r_state != "approved":
                report.drop("pending_review" if r_state == "pending" else "rejected", m.id,
                            conv.id)
                continue
            else:
                kind, target = ("good", m.text) if fb == 1 else ("unrated", m.text)
            if _is_non_answer(target):
                report.drop("non_answer", m.id, conv.id, kind != "disliked")
                continue
            target = target.strip()
            if len(target) < t.min_chars:
                report.drop("too_short", m.id, conv.id, kind != "disliked")
                continue
            if len(target) > t.max_chars:
                report.drop("too_long", m.id, conv.id, kind != "disliked")
                continue
            q = i - 1
            if q < 0 or msgs[q].role != "user" or not msgs[q].text.strip():
                report.drop("no_question", m.id, conv.id, kind != "disliked")
                continue
            if guard is not None and (guard.check(msgs[q].text) or guard.check(target)):
                report.drop("moderated", m.id, conv.id, kind != "disliked")
                continue
            history = [{"role": h.role, "content": h.text}
                       for h in msgs[max(0, q - cfg.chat.history_messages):q]]
            while history and history[0]["role"] != "user":
                history.pop(0)
            passages = _passages(m.sources)
            context = format_context(passages) if passages else None
            messages = build_messages(cfg.model.system_prompt, context, history, msgs[q].text)
            messages.append({"role": "assistant", "content": target})
            if cfg.privacy.scrub_pii:
                if scrub(target).counts:  # the model must never learn to print a placeholder
                    report.drop("pii_in_answer", m.id, conv.id, kind != "disliked")
                    continue
                scrubbed = [messages[0]]  # the system prompt and retrieved context: as served
                for msg in messages[1:-1]:
                    res = scrub(msg["content"])
                    report.scrubbed.update(res.counts)
                    scrubbed.append({"role": msg["role"], "content": res.text})
                messages = [*scrubbed, messages[-1]]
            fitted, trimmed = _fit(messages, count, t.max_seq_len)
            if fitted is None:
                report.drop("too_long_tokens", m.id, conv.id, kind != "disliked")
                continue
            ids = RecordIds(
                users=(conv.user_id,),
                messages=tuple(h.id for h in msgs[max(0, q - cfg.chat.history_messages):i + 1]),
                corrections=(m.correction_id,) if kind == "correction" and m.correction_id
                else (),
                sources=tuple(dict.fromkeys(p.source for p in passages if p.source)))
            if kind == "disliked" and disliked is not None:
                disliked.append(Example(fitted, m.id, conv.id, kind, m.created_at, ids=ids))
                continue
            report.history_trimmed += int(trimmed)
            rejected = None
            if kind == "correction" and not _is_non_answer(m.text) and m.text.strip() != target:
                rejected = m.text.strip()
                if cfg.privacy.scrub_pii and scrub(rejected).counts:
                    rejected = None  # no pair rather than a pair that holds personal data
            candidates.append(Example(fitted, m.id, conv.id, kind, m.created_at,
                                      rejected=rejected, ids=ids))
    kept = _dedupe(candidates, report)
    for ex in kept:
        report.kept[ex.kind] += 1
    return kept, report


def _dedupe(candidates: list[Example], report: DatasetReport) -> list[Example]:
    """Drop duplicates; the best kind (correction > 👍 > unrated), then the newest, wins."""
    order = sorted(candidates, key=lambda e: (KIND_RANK[e.kind], -e.created_at))
    kept: list[Example] = []
    exact: dict[str, int] = {}  # normalised text -> the kept answer's id
    shingles: list[tuple[set[str], int]] = []
    for ex in order:
        q, a = ex.messages[-2]["content"], ex.messages[-1]["content"]
        ctx = ex.messages[0]["content"]
        norm = _norm(f"{ctx}\n{q}\n{a}")
        if norm in exact:
            report.drop("duplicate", ex.answer_id, ex.conversation_id, like=exact[norm])
            continue
        sh = _shingles(f"{q} {a}")
        near = next((i for other, i in shingles if _jaccard(sh, other) >= NEAR_DUP_JACCARD),
                    None)
        if near is not None:
            report.drop("near_duplicate", ex.answer_id, ex.conversation_id, like=near)
            continue
        exact[norm] = ex.answer_id
        shingles.append((sh, ex.answer_id))
        kept.append(ex)
    kept.sort(key=lambda e: e.answer_id)
    return kept


def _eval_bucket(conversation_id: int) -> float:
    h = hashlib.sha1(f"conversation:{conversation_id}".encode()).hexdigest()
    return int(h[:8], 16) / 0xFFFFFFFF


def split_examples(cfg: LearningSettings, examples: list[Example], seen: set[str],
                   report: DatasetReport) -> Split:
    """Held-out split (stable per conversation: no conversation, hence no turn, is on both
    sides), new vs already-trained, and the replay share.

    With ``eval_fraction`` > 0 and at least two conversations, at least one conversation is
    held out and at least one trains. Fresh adapters (``continue_from_active = false``) train on
    every kept example; when continuing from the active adapter, the new examples are mixed with
    a ``replay_share`` of earlier ones.
    """
    t = cfg.training
    convs = sorted({e.conversation_id for e in examples}, key=_eval_bucket)
    held_convs = {c for c in convs if _eval_bucket(c) < t.eval_fraction}
    if t.eval_fraction > 0 and len(convs) >= 2:
        if not held_convs:
            held_convs = {convs[0]}
        if len(held_convs) == len(convs):
            held_convs.discard(convs[-1])
    held = [e for e in examples if e.conversation_id in held_convs]
    pool = [e for e in examples if e.conversation_id not in held_convs]
    new = [e for e in pool if e.key not in seen]
    old = [e for e in pool if e.key in seen]
    if t.continue_from_active:
        share = t.replay_share
        want = len(old) if share >= 1 else round(share * len(new) / (1 - share))
        replay = random.Random(t.seed).sample(old, min(len(old), want))
    else:
        replay = old
    train = new + replay
    random.Random(t.seed).shuffle(train)
    report.train, report.eval, report.new, report.replay = len(train), len(held), len(new), \
        len(replay)
    report.eval_conversations = len(held_convs)
    report.train_conversations = len({e.conversation_id for e in train})
    return Split(train=train, eval=held, new=new)


def write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    """Write one ``{"messages": [...]}`` line per example (with per-message ``weight``),
    atomically."""
    write_atomic(path, "".join(json.dumps(ex.record(), ensure_ascii=False) + "\n"
                               for ex in examples))


async def load_seen(store: Store) -> set[str]:
    raw = await store.kv_get(SEEN_KV_KEY)
    try:
        return set(json.loads(raw)) if raw else set()
    except json.JSONDecodeError:
        return set()


async def mark_seen(store: Store, keys: Sequence[str]) -> None:
    seen = await load_seen(store)
    seen.update(keys)
    await store.kv_set(SEEN_KV_KEY, json.dumps(sorted(seen)))


async def export_jsonl(cfg: LearningSettings, store: Store, out: Path, *, now: float | None = None,
                       count_tokens: TokenCounter | None = None, guard: ContentGuard | None = None
                       ) -> tuple[int, DatasetReport]:
    """``nightowl export``: every kept example as messages JSONL (scrubbed like training data)."""
    convs = await store.training_conversations()
    examples, report = build_examples(cfg, convs, now=time.time() if now is None else now,
                                      count_tokens=count_tokens, guard=guard)
    write_jsonl(Path(out), examples)
    return len(examples), report
