"""Pieces of the local decode loop that need no model: text streaming, stop strings, sampling.

Kept apart from :mod:`llm.local` so they are unit-testable with a tokenizer only. ``torch`` is
imported lazily (``import llm`` stays cheap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class IncrementalDecoder:
    """Turn a growing list of token ids into text deltas, correct for multi-byte characters.

    Byte-level BPE tokens can split one UTF-8 character across tokens; decoding such a prefix
    gives U+FFFD. Like text-generation-inference, we decode a small window twice (before and
    after the new tokens) and only release text once it no longer ends in a replacement char.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):] if len(full) > len(prefix) else ""


class StopChecker:
    """Accumulates text, finds stop strings and holds back a tail that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add ``delta``; return (text safe to emit now, whether a stop string was hit)."""
        self.text += delta
        if not self.stops:
            out = self.text[self.emitted:]
            self.emitted = len(self.text)
            return out, False
        window_start = max(0, self.emitted - max(len(s) for s in self.stops))
        hits = [i for i in (self.text.find(s, window_start) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.emitted:end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            return out, True
        hold = 0
        for s in self.stops:  # longest suffix of the text that is a proper prefix of a stop
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        end = len(self.text) - hold
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out, False

    def rest(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out


def sample_batch(logits: torch.Tensor, seen: Sequence[torch.Tensor], *,
                 temperature: Sequence[float], top_p: Sequence[float],
                 repetition_penalty: Sequence[float],
                 generators: Sequence[torch.Generator | None], top_k_scan: int = 256) -> list[int]:
    """Pick the next token of every row of ``logits`` ([rows, vocab]) with its own settings.

    Same semantics as :func:`sample_next`, vectorised: one softmax for all sampled rows, and the
    nucleus is searched among the ``top_k_scan`` most likely tokens (exact whenever their mass
    reaches ``top_p``, which it nearly always does; otherwise that row falls back to a full sort).
    """
    import torch

    logits = logits.float()
    rows, vocab = logits.shape
    pen = [i for i in range(rows) if repetition_penalty[i] != 1.0 and seen[i].numel()]
    if pen:  # every penalised (row, token) at once (a repeated id just writes the same value)
        flat = logits.view(-1)
        idx = torch.cat([seen[i] + i * vocab for i in pen])
        rp = torch.cat([torch.full((seen[i].numel(),), float(repetition_penalty[i]))
                        for i in pen])
        picked = flat.index_select(0, idx)
        flat.index_copy_(0, idx, torch.where(picked < 0, picked * rp, picked / rp))
    out = [0] * rows
    greedy = [i for i in range(rows) if temperature[i] <= 0.0]
    if greedy:
        picks = torch.argmax(logits[greedy], dim=-1).tolist()
        for i, tok in zip(greedy, picks, strict=True):
            out[i] = int(tok)
    sampled = [i for i in range(rows) if temperature[i] > 0.0]
    if not sampled:
        return out
    temps = torch.tensor([temperature[i] for i in sampled], dtype=logits.dtype)
    probs = torch.softmax(logits[sampled] / temps[:, None], dim=-1)
    k = min(top_k_scan, probs.shape[-1])
    top_probs, top_idx = torch.topk(probs, k, dim=-1)
    cum = torch.cumsum(top_probs, dim=-1)
    mass = cum[:, -1].tolist()
    for j, i in enumerate(sampled):
        p = top_p[i]
        if p < 1.0 and mass[j] >= p:
            keep = top_probs[j].masked_fill((cum[j] - top_probs[j]) > p, 0.0)
            choice = torch.multinomial(keep, 1, generator=generators[i])
            out[i] = int(top_idx[j, choice].item())
        else:  # mass of the top tokens below top_p (or top_p == 1): full distribution
            out[i] = sample_next(logits[i], seen[i][:0], temperature=temperature[i],
                                 top_p=top_p[i], repetition_penalty=1.0,
                                 generator=generators[i])
    return out


def sample_next(logits: torch.Tensor, seen: torch.Tensor, *, temperature: float, top_p: float,
                repetition_penalty: float, generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits (float32, shape [vocab]).

    Same semantics as transformers' processors: repetition penalty over every token already in
    the prompt or the answer (divide positive logits, multiply negative ones), temperature,
    nucleus (top-p) filtering; ``temperature == 0`` means greedy.
    """
    import torch

    if repetition_penalty != 1.0 and seen.numel():
        picked = logits.index_select(0, seen)
        picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        logits = logits.index_copy(0, seen, picked)
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        remove = (cum - probs) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        probs = torch.softmax(sorted_logits, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)
        return int(sorted_idx[choice].item())
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
