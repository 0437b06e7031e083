"""The running batch: its rows, their K/V cache and the attention mask. Worker thread only.

Layout invariants:
* Row i of the batch is row i of every layer's K/V tensors and of the mask; rows are
  right-aligned (left-padded): the last column of every row is its latest token, ``mask`` is 1 on
  real tokens and 0 on padding.
* A column that is padding in every row is trimmed whenever rows join or leave.
* The K/V of a request is computed once (by its prefill) and kept until it leaves: joining rows
  are merged in, leaving rows are cut out, nothing is recomputed. Decode steps append K/V in
  place into buffers with spare room (:func:`grow_layer_class`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm.local.detokenizer import IncrementalDecoder, StopChecker
from llm.local.events import Delta, Request

GROW = 64  # spare decode positions per K/V buffer (re-allocated when full)

Forward = Callable[..., Any]  # (input_ids, peft names per row, **model kwargs) -> model output


@dataclass(eq=False)
class Row:
    """One running request: its adapter, text state and sampling state."""

    req: Request
    version: str | None  # adapter version label answering this request
    name: str | None  # peft adapter name (None = base)
    decoder: IncrementalDecoder
    stops: StopChecker
    seen: Any  # torch.LongTensor of generated token ids, for the repetition penalty
    max_new: int
    generator: Any = None
    generated: int = 0
    pos: int = 0  # position id of the last sampled token (the next decode input)
    last: int = 0  # last sampled token (next decode input)
    done: str = ""  # finish reason once finished
    seen_set: set[int] = field(default_factory=set)

    def take(self, tok: int, eos: frozenset[int], torch: Any) -> None:
        """Stream the text of the sampled ``tok``; mark the row done when the answer ends."""
        self.generated += 1
        self.pos += 1
        self.last = tok
        if tok in eos and not self.req.params.ignore_eos:
            self.done = "stop"
            self.req.send(Delta(self._tail(), self.generated))
            return
        if tok not in self.seen_set:
            self.seen_set.add(tok)
            self.seen = torch.cat([self.seen, torch.tensor([tok], dtype=torch.long)])
        text, hit = self.stops.feed(self.decoder.push(tok))
        if hit:
            self.done = "stop"
        elif self.generated >= self.max_new:
            self.done = "length"
            text += self._tail()
        if text:
            self.req.send(Delta(text, self.generated))

    def _tail(self) -> str:
        """Text still held back when the row ends (incomplete bytes, a possible stop prefix)."""
        out, hit = self.stops.feed(self.decoder.flush())
        return out if hit else out + self.stops.rest()


class Batch:
    """Rows, their K/V cache (a transformers DynamicCache) and mask ``[rows, cache_len]``."""

    def __init__(self, torch: Any, device: str) -> None:
        self._torch = torch
        self._device = device
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None
        self._grow: Any = None  # K/V cache layer class with spare capacity

    def names(self) -> set[str | None]:
        """The peft adapter names the running rows use."""
        return {r.name for r in self.rows}

    def clear(self) -> None:
        self.rows, self.cache, self.mask = [], None, None

    def decode(self, forward: Forward) -> Any:
        """One forward pass for every row (its last token in, K/V appended); the next-token
        logits ``[rows, vocab]``."""
        torch = self._torch
        n = len(self.rows)
        input_ids = torch.tensor([[r.last] for r in self.rows], device=self._device)
        positions = torch.tensor([[r.pos] for r in self.rows], device=self._device)
        mask = torch.cat([self.mask, torch.ones((n, 1), dtype=torch.long,
                                                device=self._device)], dim=1)
        out = forward(input_ids, [r.name for r in self.rows], attention_mask=mask,
                      position_ids=positions, past_key_values=self.cache, logits_to_keep=1)
        self.mask = mask
        return out.logits[:, -1]

    def join(self, rows: list[Row], cache: Any, mask: Any) -> None:
        """Prefilled ``rows`` (row i = row i of ``cache`` and ``mask``, left-padded) join the
        batch; those already done are left out."""
        torch = self._torch
        keep = [i for i, r in enumerate(rows) if not r.done]
        if not keep:
            return
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=self._device)
            mask = mask.index_select(0, idx)
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
        lead = int((mask.sum(0) > 0).long().argmax().item())
        if lead:
            for layer in cache.layers:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
            mask = mask[:, lead:]
        self._merge([rows[i] for i in keep], cache, mask)

    def _merge(self, rows: list[Row], cache: Any, mask: Any) -> None:
        torch = self._torch
        length = mask.shape[1]
        if self.cache is None:
            if self._grow is None:
                self._grow = grow_layer_class()
            for layer in cache.layers:
                layer.__class__ = self._grow
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        cur = self.mask.shape[1]
        width = max(cur, length)

        def pad(t: Any, n: int) -> Any:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[-2 if t.dim() == 4 else -1] = n
            z = torch.zeros(shape, dtype=t.dtype, device=t.device)
            return torch.cat([z, t], dim=-2 if t.dim() == 4 else -1)

        for mine, new in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, width - cur), pad(new.keys, width - length)])
            mine.values = torch.cat([pad(mine.values, width - cur),
                                     pad(new.values, width - length)])
        self.mask = torch.cat([pad(self.mask, width - cur), pad(mask, width - length)])
        self.rows.extend(rows)

    def drop(self, rows: list[Row]) -> None:
        """Cut ``rows`` out of the batch (finished or cancelled)."""
        if not rows:
            return
        torch = self._torch
        gone = set(map(id, rows))
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if not keep:
            self.clear()
            return
        idx = torch.tensor(keep, device=self._device)
        self.mask = self.mask.index_select(0, idx)
        self.rows = [self.rows[i] for i in keep]
        lead = int((self.mask.sum(0) > 0).long().argmax().item())
        # keep the remaining rows; trim columns that are padding in every one of them
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]
            layer.values = layer.values.index_select(0, idx)[:, :, lead:]
        self.mask = self.mask[:, lead:]


def grow_layer_class() -> Any:
    """A DynamicLayer that appends into spare capacity instead of ``torch.cat`` per step.

    transformers' DynamicLayer copies the whole K/V cache of the batch at every decode step
    (``torch.cat``). This layer keeps K/V as views into a buffer with room for ``GROW`` more
    tokens and writes the new token in place; any outside reassignment of ``keys``/``values``
    (merge, drop, trim) is noticed and the next update starts a new buffer.
    """
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        _kbuf: Any = None
        _vbuf: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
                   ) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                return super().update(key_states, value_states, *args, **kwargs)
            keys: Any = self.keys
            values: Any = self.values
            n, add = keys.shape[-2], key_states.shape[-2]
            kbuf, vbuf = self._kbuf, self._vbuf
            fresh = (kbuf is None or keys.data_ptr() != kbuf.data_ptr()
                     or values.data_ptr() != vbuf.data_ptr()
                     or kbuf.shape[0] != keys.shape[0] or n + add > kbuf.shape[-2]
                     or keys.stride() != kbuf.stride())
            if fresh:
                shape = list(keys.shape)
                shape[-2] = n + add + GROW
                kbuf = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
                vbuf = torch.zeros(shape, dtype=values.dtype, device=values.device)
                kbuf[:, :, :n].copy_(keys)
                vbuf[:, :, :n].copy_(values)
                self._kbuf, self._vbuf = kbuf, vbuf
            kbuf[:, :, n:n + add].copy_(key_states)
            vbuf[:, :, n:n + add].copy_(value_states)
            self.keys, self.values = kbuf[:, :, :n + add], vbuf[:, :, :n + add]
            return self.keys, self.values

    return GrowLayer
