"""oneDNN prepacked linear layers: same outputs as nn.Linear, row results independent of batch
size, and peft LoRA still applies on top."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from llm.local.prepack import packed_linear_class, prepack_linears  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(64, 96, bias=False)
        self.down = torch.nn.Linear(96, 64, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prepacked_model_matches_plain_and_is_batch_independent(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    plain = Tiny().to(dtype).eval()
    packed = copy.deepcopy(plain)
    weights = prepack_linears(packed)
    assert weights is not None and len(weights) == 2
    assert type(packed.up) is packed_linear_class()
    x = torch.randn(8, 5, 64, dtype=dtype)
    with torch.inference_mode():
        want, got = plain(x), packed(x)
        one = packed(x[:1])
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
    assert torch.equal(one, got[:1])  # a row's result does not depend on the batch around it


def test_lora_applies_on_top_of_a_prepacked_layer() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = Tiny().eval()
    packed = copy.deepcopy(base)
    prepack_linears(packed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["up"], init_lora_weights=False)
    torch.manual_seed(1)
    lora_plain = get_peft_model(base, cfg).eval()
    torch.manual_seed(1)
    lora_packed = get_peft_model(packed, copy.deepcopy(cfg)).eval()
    x = torch.randn(3, 64)
    with torch.inference_mode():
        want, got = lora_plain(x), lora_packed(x)
        with lora_packed.disable_adapter():
            without = lora_packed(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, without, atol=1e-3)  # the adapter really changed the output


def test_merged_adapter_weights_give_the_lora_output_without_peft_in_the_path() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = Tiny().eval()
    weights = prepack_linears(model)
    assert weights is not None
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False)
    lora = get_peft_model(model, cfg).eval()
    x = torch.randn(3, 64)
    with torch.inference_mode():
        want = lora(x)
        base = model.down.base_layer(torch.nn.functional.silu(model.up.base_layer(x)))
        assert weights.merge(lora, "default") and weights.merged_name == "default"
        lora.base_model.disable_adapter_layers()
        weights.use_merged = True
        got = lora(x)
        weights.use_merged = False
        plain = lora(x)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(plain, base, atol=1e-5)  # merged weights only when asked for
    weights.clear()
    assert weights.merged_name is None and model.up.base_layer._merged is None


def test_layers_that_are_not_plain_cpu_linears_are_left_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.float16), torch.nn.ReLU())
    assert prepack_linears(model) is None
    assert type(model[0]) is torch.nn.Linear
