"""oneDNN weight prepacking for ``nn.Linear`` layers on the CPU.

A decode step of a small model streams every weight matrix from memory once, so its cost is the
speed at which the matmul kernel reads weights. PyTorch's plain ``linear`` reads the row-major
weight; oneDNN's linear with the weight reordered once into its blocked layout reads it much
faster. Measured on the 2-core CPU (30 SmolLM2 layers, bf16, weights larger than the caches):

    rows per step     1        8        32       1600 (a prefill)
    plain linear      17.7 ms  21.0 ms  37.3 ms  909 ms
    prepacked         12.0 ms  12.7 ms  24.9 ms  818 ms

with bit-identical outputs, and each row's result independent of how many rows share the call
(so batching never changes a greedy answer). The cost is a second copy of the weights in memory
(``[model] cpu_prepack = false`` turns it off). LoRA adapters keep working: peft wraps the packed
layer like any ``nn.Linear`` and adds its low-rank term on top.
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

        def forward(self, x: Any) -> Any:
            if x.dtype != self._packed.dtype or x.device.type != "cpu":
                return torch.nn.functional.linear(x, self.weight, self.bias)
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    return PackedLinear


def prepack_linears(model: Any, batch_hint: int = 8) -> int:
    """Swap every plain ``nn.Linear`` of ``model`` (on the CPU, bf16/fp32) for a packed one.

    Returns how many layers were packed; 0 (and the model untouched) when oneDNN is missing or
    its result does not match ``F.linear`` on this machine.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return 0
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear
              and m.weight.device.type == "cpu"
              and m.weight.dtype in (torch.bfloat16, torch.float32)]
    if not layers:
        return 0
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
                return 0
            for layer in layers:
                layer._packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(),
                                                                        batch_hint)
                layer.__class__ = cls
    except (RuntimeError, AttributeError) as exc:  # an op missing from this torch build
        log.warning("oneDNN weight prepacking unavailable (%s); using plain linear", exc)
        for layer in layers:
            if type(layer) is cls:
                layer.__class__ = torch.nn.Linear
        return 0
    return len(layers)
