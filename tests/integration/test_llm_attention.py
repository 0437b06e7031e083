"""The engine's attention kernel gives transformers' SDPA results on left-padded batches.

Real SmolLM2 weights in float32: a padded two-row prefill and three decode steps (with the
engine's K/V layer that keeps spare capacity) through ``llm.local.attention``, against the same
model loaded with ``attn_implementation="sdpa"`` and a plain DynamicCache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _load(path: Path, attn: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=attn).eval()


def _run(model: Any, grow: bool, rows: int = 2) -> list[Any]:
    from transformers import DynamicCache

    from llm.local.batch import grow_layer_class

    torch.manual_seed(0)
    long, short = torch.randint(100, 5000, (7,)), torch.randint(100, 5000, (4,))
    ids = torch.zeros((2, 7), dtype=torch.long)
    mask = torch.zeros((2, 7), dtype=torch.long)
    ids[0], mask[0] = long, 1
    ids[1, 3:], mask[1, 3:] = short, 1
    ids, mask = ids[:rows], mask[:rows]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    outs = []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    past_key_values=DynamicCache(), logits_to_keep=1)
        cache = out.past_key_values
        if grow:
            for layer in cache.layers:
                layer.__class__ = grow_layer_class()
        outs.append(out.logits[:, -1])
        last = pos[:, -1:]
        for _ in range(3):
            tok = outs[-1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
            last = last + 1
            out = model(input_ids=tok, attention_mask=mask, position_ids=last,
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
            outs.append(out.logits[:, -1])
    return outs


@pytest.mark.parametrize("rows", [2, 1])
def test_kernel_matches_sdpa_on_padded_prefill_and_decode(embedded_model_dir: Path,
                                                         rows: int) -> None:
    from llm.local.attention import register

    ours = _run(_load(embedded_model_dir, register()), grow=True, rows=rows)
    ref = _run(_load(embedded_model_dir, "sdpa"), grow=False, rows=rows)
    for step, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), f"step {step} differs"
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    if rows == 2:  # the padded row really is padded: its logits differ from the other row's
        assert not torch.allclose(ours[0][0], ours[0][1], atol=1e-2)


def test_packed_prompts_attend_only_within_themselves(embedded_model_dir: Path) -> None:
    """Three prompts packed into one row (the engine's prefill) give each prompt's logits and
    K/V as transformers' SDPA computes them for that prompt alone."""
    from transformers import DynamicCache

    from llm.local.attention import register

    ours, ref = _load(embedded_model_dir, register()), _load(embedded_model_dir, "sdpa")
    torch.manual_seed(1)
    prompts = [torch.randint(100, 5000, (n,)) for n in (7, 3, 5)]
    lens = [len(p) for p in prompts]
    bounds = torch.tensor([0, *lens]).cumsum(0)
    with torch.inference_mode():
        packed = ours(input_ids=torch.cat(prompts)[None], use_cache=True,
                      past_key_values=DynamicCache(),
                      position_ids=torch.cat([torch.arange(n) for n in lens])[None],
                      logits_to_keep=bounds[1:] - 1, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                      max_length_q=max(lens), max_length_k=max(lens))
        for i, prompt in enumerate(prompts):
            alone = ref(input_ids=prompt[None], use_cache=True, past_key_values=DynamicCache(),
                        logits_to_keep=1)
            assert torch.allclose(packed.logits[0, i], alone.logits[0, -1], atol=2e-3, rtol=1e-3)
            start, end = int(bounds[i]), int(bounds[i + 1])
            for mine, theirs in zip(packed.past_key_values.layers,
                                    alone.past_key_values.layers, strict=True):
                assert torch.allclose(mine.keys[0, :, start:end], theirs.keys[0], atol=2e-3)
                assert torch.allclose(mine.values[0, :, start:end], theirs.values[0], atol=2e-3)
    # and the prompts really are different: attending across them would have changed these
    assert not torch.allclose(packed.logits[0, 0], packed.logits[0, 1], atol=1e-2)
