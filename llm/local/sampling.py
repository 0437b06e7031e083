"""Next-token choice for every row of a step, each with its own settings (vectorised).

Same semantics as transformers' logits processors: repetition penalty, temperature, nucleus
(top-p); ``temperature == 0`` means greedy. ``torch`` is imported lazily (``import llm`` stays
cheap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
