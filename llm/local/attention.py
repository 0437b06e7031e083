"""The engine's attention kernel, registered with transformers as ``nightowl_decode``.

* Decode (one query token per row): the query heads are grouped per KV head and attention is two
  small matmuls over the whole K/V buffer (transformers' SDPA path repeats K/V per query head and
  handles the padding mask in a slow general kernel); the padding bias is built once per step and
  shared by all layers.
* Prefill (many query tokens): SDPA with its grouped-query path instead of repeated K/V; prompts
  packed into one row (``cu_seq_lens_q``, as the engine's prefill sends them) get one causal SDPA
  call each, so no prompt attends to another and each gets the same bits as when alone. A call
  that attends per prompt appends to the ``PACKED_MARK`` list it was given: the engine's proof
  that the model passed the packing arguments through.
* The mask semantics are SDPA's (``sdpa_mask``: boolean, True = may attend), so padding and
  causality are unchanged; spare positions of a K/V buffer hold zeros and get no weight.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

ATTN_NAME = "nightowl_decode"
PACKED_MARK = "nightowl_packed"  # kwarg: a list the kernel appends to when it attends per prompt


def register() -> str:
    """Register the kernel (idempotent) and return its name for ``attn_implementation``."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    memo = threading.local()  # per worker thread: the last step's mask and its additive bias

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  dropout: float = 0.0, scaling: float | None = None, **kw: Any
                  ) -> tuple[Any, None]:
        import torch

        batch, heads, q_len, dim = query.shape
        scale = scaling if scaling is not None else dim ** -0.5
        if module.training or kw.get("position_bias") is not None or kw.get("softcap"):
            return sdpa_attention_forward(module, query, key, value, attention_mask,
                                          dropout=dropout, scaling=scaling, **kw)
        if q_len > 1 and kw.get("cu_seq_lens_q") is not None:
            if (seen := kw.get(PACKED_MARK)) is not None:
                seen.append(True)
            return _packed(query, key, value, kw["cu_seq_lens_q"], scale), None
        if q_len > 1:
            if attention_mask is None and key.shape[2] != q_len:
                return sdpa_attention_forward(module, query, key, value, attention_mask,
                                              dropout=dropout, scaling=scaling, **kw)
            # transformers repeats K/V per query head whenever there is a padding mask; SDPA's
            # own grouped-query path reads them once (8 rows x 200 tokens: 10.5 -> 8.4 ms/layer)
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, scale=scale,
                is_causal=attention_mask is None, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        kv_heads, kv_len = key.shape[1], key.shape[2]
        group = heads // kv_heads
        q = query.reshape(batch, kv_heads, group, dim)
        # K/V may be views into buffers with spare room (llm.local.batch's cache layer):
        # multiply with the whole contiguous buffer (a strided view would be copied by every
        # matmul) and give the spare positions no weight; they hold zeros, never garbage.
        k_all, v_all = _whole(key), _whole(value)
        bias = _bias(memo, attention_mask, batch, kv_len, k_all.shape[2])
        scores = torch.matmul(q, k_all.transpose(-1, -2))  # [batch, kv_heads, group, cap]
        probs = torch.softmax(torch.add(bias, scores, alpha=scale), dim=-1).to(value.dtype)
        out = torch.matmul(probs, v_all)  # [batch, kv_heads, group, dim]
        return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None

    AttentionInterface.register(ATTN_NAME, attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


def _packed(query: Any, key: Any, value: Any, cu_seq_lens: Any, scale: float) -> Any:
    """Causal attention within each of the prompts packed into one row (``cu_seq_lens``: their
    cumulative lengths, as in flash-attention's varlen API): one SDPA call per prompt, so no
    prompt sees another and each gets the same kernel (and the same bits) as when alone.
    Returns ``[1, total, heads, dim]``."""
    import torch

    _, heads, total, dim = query.shape
    out = torch.empty((1, total, heads, dim), dtype=query.dtype, device=query.device)
    bounds = cu_seq_lens.tolist()
    for start, end in itertools.pairwise(bounds):
        part = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], scale=scale,
            is_causal=True, enable_gqa=True)
        out[:, start:end] = part.transpose(1, 2)
    return out


def _bias(memo: Any, mask: Any, batch: int, kv_len: int, cap: int) -> Any:
    """Additive float32 bias ``[batch|1, 1, 1, cap]`` for one decode step: 0 where the query may
    attend, -inf on padding and on the spare positions past ``kv_len``.

    Every layer of a forward pass gets the same mask object, so the bias is built once per step
    (not once per layer) and kept for as long as that object is the one being passed.
    """
    import torch

    key = (kv_len, cap)
    if getattr(memo, "mask", None) is mask and getattr(memo, "key", None) == key:
        return memo.bias
    rows = mask.shape[0] if mask is not None else 1
    bias = torch.zeros((rows, 1, 1, cap), dtype=torch.float32, device=mask.device
                       if mask is not None else "cpu")
    bias[..., kv_len:] = float("-inf")
    if mask is not None:
        last = mask[:, :, -1:, -kv_len:]  # [batch|1, 1, 1, kv_len]
        if last.dtype == torch.bool:
            bias[..., :kv_len].masked_fill_(~last, float("-inf"))
        else:
            bias[..., :kv_len].add_(last.float())
    memo.mask, memo.key, memo.bias = mask, key, bias
    return bias


def _whole(t: Any) -> Any:
    """``t`` ([batch, heads, n, dim]) itself if contiguous; the whole buffer it is the leading
    ``n`` positions of (``[batch, heads, cap, dim]``, contiguous) if it is such a view."""
    if t.is_contiguous():
        return t
    b, h, _, d = t.shape
    s = t.stride()
    if s[3] == 1 and s[2] == d and s[1] % d == 0 and s[0] == h * s[1] \
            and t.storage_offset() == 0:
        cap = s[1] // d
        if t.untyped_storage().nbytes() >= b * h * cap * d * t.element_size():
            return t.as_strided((b, h, cap, d), (h * cap * d, cap * d, d, 1))
    return t.contiguous()
