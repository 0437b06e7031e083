"""oneDNN weight prepacking for ``nn.Linear`` layers on the CPU.

A decode step of a small model streams every weight matrix from memory once, so its cost is the
speed at which the matmul kernel reads weights. PyTorch's plain ``linear`` reads the row-major
weight; oneDNN's linear reads a copy reordered once into its blocked layout much faster. Outputs
are bit-identical to ``F.linear`` (checked on a probe layer at start-up; no prepacking if not),
and each row's result is independent of how many rows share the call, so batching never changes
a greedy answer. The cost is a second copy of the weights in memory (``[model] cpu_prepack =
false`` turns it off). LoRA adapters keep working: peft wraps the packed layer like any
``nn.Linear`` and adds its low-rank term on top.

peft's LoRA forward adds two small matmuls and a handful of ops to every adapted layer, so
:meth:`PackedWeights.merge` also packs ``W + scale * B @ A`` of the ACTIVE adapter; a batch whose
rows all use it runs with peft's layers disabled on those merged weights (the common case), while
a canary or other adapter still goes through peft (mixed batches included).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("nightowl.llm")


@functools.cache
def packed_linear_class() -> Any:
    """``nn.Linear`` whose forward runs oneDNN's linear on a prepacked copy of the weight
    (built on first use, so that importing this module does not import torch)."""
    import torch

    class PackedLinear(torch.nn.Linear):
        _packed: Any = None
        _merged: Any = None  # packed weight with the active adapter merged in, if any
        _owner: Any = None  # the PackedWeights that says which of the two to use

        def forward(self, x: Any) -> Any:
            merged = self._merged is not None and self._owner.use_merged
            if x.dtype != self._packed.dtype or x.device.type != "cpu":
                if merged:
                    raise RuntimeError("merged adapter weights need CPU inputs of the model dtype")
                return torch.nn.functional.linear(x, self.weight, self.bias)
            weight = self._merged if merged else self._packed
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")

    return PackedLinear


class PackedWeights:
    """The packed layers of one model, and which adapter (if any) is merged into them."""

    def __init__(self, layers: list[Any], batch_hint: int) -> None:
        self.layers = layers
        self.batch_hint = batch_hint
        self.merged_name: str | None = None  # peft adapter name merged into ``_merged``
        self.use_merged = False  # set per forward pass by the engine
        for layer in layers:
            layer._owner = self

    def __len__(self) -> int:
        return len(self.layers)

    def clear(self) -> None:
        """Drop the merged weights (frees their memory)."""
        for layer in self.layers:
            layer._merged = None
        self.merged_name = None
        self.use_merged = False

    def merge(self, peft_model: Any, name: str) -> bool:
        """Pack ``W + delta`` of adapter ``name`` for every LoRA layer; False (nothing merged)
        when the adapter has layers this cannot express (DoRA, LoRA on embeddings, ...)."""
        import torch
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear as LoraLinear

        cls = packed_linear_class()
        pending: list[tuple[Any, Any]] = []
        for module in peft_model.modules():
            if not isinstance(module, LoraLayer):
                continue
            uses = name in module.lora_A or name in getattr(module, "lora_embedding_A", {})
            if not uses:
                continue
            base = module.get_base_layer()
            if (not isinstance(module, LoraLinear) or type(base) is not cls
                    or name in getattr(module, "lora_variant", {})):
                self.clear()
                return False
            pending.append((base, module))
        self.clear()
        with torch.no_grad():
            for base, module in pending:
                weight = base.weight.float() + module.get_delta_weight(name).float()
                base._merged = torch.ops.mkldnn._reorder_linear_weight(
                    weight.to(base.weight.dtype), self.batch_hint)
        self.merged_name = name
        return True


def prepack_linears(model: Any, batch_hint: int = 8) -> PackedWeights | None:
    """Swap every plain ``nn.Linear`` of ``model`` (on the CPU, bf16/fp32) for a packed one.

    Returns the packed layers; None (and the model untouched) when there is nothing to pack,
    oneDNN is missing, or its result does not match ``F.linear`` on this machine.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear
              and m.weight.device.type == "cpu"
              and m.weight.dtype in (torch.bfloat16, torch.float32)]
    if not layers:
        return None
    cls = packed_linear_class()
    try:
        with torch.no_grad():
            probe = layers[0]
            packed = torch.ops.mkldnn._reorder_linear_weight(probe.weight.detach(), batch_hint)
            x = torch.randn(3, probe.in_features, dtype=probe.weight.dtype)
            got = torch.ops.mkldnn._linear_pointwise(x, packed, probe.bias, "none", [], "")
            want = torch.nn.functional.linear(x, probe.weight, probe.bias)
            if not torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2):
                log.warning("oneDNN prepacked linear disagrees with F.linear; not prepacking")
                return None
            for layer in layers:
                layer._packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(),
                                                                        batch_hint)
                layer.__class__ = cls
    except (RuntimeError, AttributeError) as exc:  # an op missing from this torch build
        log.warning("oneDNN weight prepacking unavailable (%s); using plain linear", exc)
        for layer in layers:
            layer.__dict__.pop("_packed", None)
            if type(layer) is cls:
                layer.__class__ = torch.nn.Linear
        return None
    return PackedWeights(layers, batch_hint)
