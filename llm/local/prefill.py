"""Prefill: the prompts admitted together get their K/V and first tokens in as few passes as can be.

Invariants:
* The prompts are packed into ONE row, without padding (prompts of 50 and 500 tokens cost 550
  tokens of compute, not 1,000), one forward pass per adapter among them; attention stays within
  each prompt (:mod:`llm.local.attention`'s packed path), so a prompt's logits and K/V are those
  it would get alone.
* If the model does not hand the packing arguments to that kernel (an architecture outside
  transformers' attention interface), the first such pass is detected and discarded, and from
  then on every prompt is prefilled on its own (``packs`` turns False).
* The result is in the batch's decode layout (:mod:`llm.local.batch`): row i holds prompt i's
  K/V right-aligned, ``mask`` is 1 on its tokens.
* A prompt longer than the context is cut from the front (a safety net: callers fit prompts with
  :func:`llm.prompt.fit_messages`); the repetition penalty covers generated tokens only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm.local.attention import PACKED_MARK
from llm.local.batch import Forward, Row
from llm.local.detokenizer import IncrementalDecoder, StopChecker
from llm.local.events import Finished, Request, Started
from llm.local.loading import Loaded, render
from llm.local.lora import AdapterSet

log = logging.getLogger("nightowl.llm")


@dataclass(frozen=True)
class Prepared:
    """An admitted request: its row and its prompt's token ids."""

    row: Row
    ids: list[int]


@dataclass(frozen=True)
class Prefilled:
    """The prefill's result: next-token logits ``[rows, vocab]`` and the rows' K/V and mask."""

    rows: list[Row]
    logits: Any
    cache: Any
    mask: Any


class Prefill:
    """Tokenizes admitted requests and runs their prefill (worker thread)."""

    def __init__(self, loaded: Loaded, adapters: AdapterSet) -> None:
        self._loaded = loaded
        self._adapters = adapters
        self._torch = loaded.torch
        self._device = loaded.device
        self._packing = True

    @property
    def packs(self) -> bool:
        """False once the model showed it cannot pack prompts (each is then prefilled alone)."""
        return self._packing

    def prepare(self, req: Request) -> Prepared | None:
        """Tokenize and resolve one request; None when it is already done (no room to answer)."""
        torch = self._torch
        context = self._loaded.context_length
        ids = render(self._loaded.tokenizer, req.messages)
        limit = max(context - 1, 1)
        if len(ids) > limit:  # safety net: callers fit prompts with llm.prompt.fit_messages
            ids = ids[-limit:]
        p = req.params
        version, name = self._adapters.resolve(req.selector)
        max_new = max(0, min(p.max_new_tokens, context - len(ids)))
        gen = None
        if p.seed is not None and p.temperature > 0:
            gen = torch.Generator().manual_seed(p.seed)
        # The repetition penalty covers generated tokens only: penalising the prompt's tokens
        # stops a small model from quoting retrieved sources (measured: grounded answers with
        # generation-only penalty, off-topic ones with the prompt included).
        row = Row(req, version, name, IncrementalDecoder(self._loaded.tokenizer),
                  StopChecker(p.stop), seen=torch.zeros(0, dtype=torch.long), max_new=max_new,
                  generator=gen, pos=len(ids) - 1)
        req.send(Started(version, len(ids)))
        if max_new == 0:
            req.send(Finished("length", 0))
            return None
        return Prepared(row, ids)

    def run(self, batch: list[Prepared], forward: Forward) -> Prefilled:
        """Every prompt's K/V and last-token logits, in the decode layout."""
        torch = self._torch
        rows = [p.row for p in batch]
        lens = [len(p.ids) for p in batch]
        width = max(lens)
        logits: Any = None
        cache: Any = None
        for part, out in self._passes(batch, forward):
            if logits is None:
                logits = out.logits.new_empty((len(rows), out.logits.shape[-1]))
                cache = out.past_key_values
                keys = [torch.zeros((len(rows), layer.keys.shape[1], width,
                                     layer.keys.shape[3]), dtype=layer.keys.dtype,
                                    device=self._device) for layer in cache.layers]
                values = [torch.zeros_like(k) for k in keys]
            logits[part] = out.logits[0]
            start = 0
            for i in part:  # each prompt's K/V right-aligned in its row
                end = start + lens[i]
                for k, v, layer in zip(keys, values, out.past_key_values.layers, strict=True):
                    k[i, :, width - lens[i]:] = layer.keys[0, :, start:end]
                    v[i, :, width - lens[i]:] = layer.values[0, :, start:end]
                start = end
        for layer, k, v in zip(cache.layers, keys, values, strict=True):
            layer.keys, layer.values = k, v
        shift = torch.tensor([width - n for n in lens], device=self._device)
        cols = torch.arange(width, device=self._device)
        mask = (cols[None, :] >= shift[:, None]).long()  # 1 = a real token
        return Prefilled(rows, logits, cache, mask)

    def _passes(self, batch: list[Prepared], forward: Forward
                ) -> Iterator[tuple[list[int], Any]]:
        """The forward passes: (indices into ``batch``, output), one pass per adapter among the
        rows, or one per prompt once the model has shown it cannot pack."""
        groups: dict[str | None, list[int]] = {}
        for i, prepared in enumerate(batch):
            groups.setdefault(prepared.row.name, []).append(i)
        for name, members in groups.items():
            pending = [members] if self._packing else [[i] for i in members]
            while pending:
                part = pending.pop(0)
                out = self._packed_pass([batch[i].ids for i in part], name, forward)
                if out is None:  # no packing for this model: these prompts one at a time
                    pending[:0] = [[i] for i in part]
                    continue
                yield part, out

    def _packed_pass(self, prompts: list[list[int]], name: str | None, forward: Forward) -> Any:
        """One forward pass over ``prompts`` packed into a single row; the logits are those of
        each prompt's last token (``[1, len(prompts), vocab]``). None (and packing off from now
        on) when the model did not hand the segments to the attention kernel: its attention
        would have crossed from one prompt into the next."""
        torch = self._torch
        from transformers import DynamicCache

        lens = [len(ids) for ids in prompts]
        ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long,
                           device=self._device)
        positions = torch.cat([torch.arange(n, device=self._device) for n in lens])[None]
        bounds = torch.tensor([0, *lens], device=self._device).cumsum(0)
        seen: list[bool] = []  # the kernel appends to it when it attends per segment
        segments: dict[str, Any] = {} if len(prompts) == 1 else {
            "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": max(lens),
            "max_length_k": max(lens), PACKED_MARK: seen}
        out = forward(ids, [name], past_key_values=DynamicCache(), position_ids=positions,
                      logits_to_keep=bounds[1:] - 1, **segments)
        if segments and not seen:
            log.warning("this model does not pass packed-prompt arguments to its attention; "
                        "prefilling one prompt at a time")
            self._packing = False
            return None
        return out
