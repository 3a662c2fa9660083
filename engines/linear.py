"""Linear layers with their bf16 weights prepacked for oneDNN once, on CPU.

A bf16 ``F.linear`` on CPU reaches oneDNN's matrix multiply, which reorders the weight into its
blocked layout at every call. ``torch.ops.mkldnn._reorder_linear_weight`` does that once and
``_linear_pointwise`` multiplies with the result, without the reorder (the same values bit
for bit on the machine measured; tests allow bf16's resolution for other CPUs' kernels).
Measured on a 2-core AVX-512 BF16 CPU (``benchmarks/bench_linear.py``): 1.05-1.41x per layer
(DA-V2-small's 1370 x 384 -> 1536: 2.56 -> 1.87 ms; SAM3's 5184 x 1024 -> 1024: 15.5 -> 12.0
ms), whole forwards 1.03-1.10x (DA-V2-small at 518², SAM3's vision encoder 1.06x; DINOv3
ViT-S/16 ~1.04x, whose q/k/v stay dense: they are views of one packed projection,
:mod:`engines.families.dinov3.attention`).

The packed weight replaces the dense one (no second copy: a 7B model's linear weights are
13 GB in bf16): a packed layer keeps it as ``packed_weight`` and gives ``weight`` back as a
dense tensor made on demand, which the served path never asks for (tested per family). The
layer runs its own code (the dense weight) for anything but a bf16 CPU input at inference
(autograd, another dtype); a trace is refused (the export loads float32 models, never packed).
Moving or casting the layer (``to``, ``float``...) first unpacks it back into a plain
``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def can_pack(module: nn.Module) -> bool:
    """A plain ``nn.Linear`` whose weight is a bf16 CPU tensor of its own (not a view)."""
    if type(module) is not nn.Linear:
        return False
    weight = module.weight
    return (
        weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        # A view into a larger tensor (DINOv3's q/k/v share one packed matrix) stays dense.
        and weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    )


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight lives prepacked (made by :func:`use_packed_linears`)."""

    packed_weight: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dense weight, rebuilt from the packed one (a copy: for code off the fast path)."""
        return self.packed_weight.to_dense()

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Linear's name)
        """OneDNN with the packed weight for bf16 on CPU at inference, else ``F.linear``."""
        if torch.jit.is_tracing():  # the tracer cannot record oneDNN's opaque weight
            raise RuntimeError(
                "a layer with a prepacked weight cannot be traced: unpack it first "
                "(PackedLinear.unpack) or load the model in float32, as the ONNX export does"
            )
        if (
            input.dtype == torch.bfloat16
            and input.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            # oneDNN reads the input's memory as laid out row-major: make sure it is.
            return torch.ops.mkldnn._linear_pointwise(
                input.contiguous(), self.packed_weight, self.bias, "none", [], ""
            )
        return F.linear(input, self.weight, self.bias)

    def unpack(self) -> None:
        """Back to a plain ``nn.Linear`` with its dense weight as a parameter."""
        dense = nn.Parameter(self.packed_weight.to_dense(), requires_grad=False)
        del self.packed_weight
        self.__class__ = nn.Linear  # type: ignore[assignment]
        self.register_parameter("weight", dense)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # A move or cast works on parameters: unpack first, so the weight goes with the rest.
        self.unpack()
        return nn.Linear._apply(self, fn, recurse)


def packed_bytes(module: nn.Module) -> int:
    """Bytes of the packed weights under ``module`` (they are not parameters), each once."""
    weights = {
        id(m.packed_weight): m.packed_weight
        for m in module.modules()
        if isinstance(m, PackedLinear)
    }
    return sum(w.numel() * w.element_size() for w in weights.values())


def packing_supported() -> bool:
    """Whether oneDNN runs bf16 here (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; not AVX2 alone)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN's operators
        return False


def use_packed_linears(module: nn.Module) -> int:
    """Pack every bf16 CPU ``nn.Linear`` under ``module`` in place; how many were packed.

    None where oneDNN cannot run bf16 (:func:`packing_supported`): those layers stay as they are.
    """
    if not packing_supported():
        return 0
    packed = 0
    # Tied weights (GroundingDINO's box heads) are packed once; the dense tensor is kept here
    # until the end, so that its id names it alone.
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in module.modules():
        if not can_pack(layer):
            continue
        assert isinstance(layer, nn.Linear)
        weight = layer.weight
        if id(weight) not in shared:
            packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            shared[id(weight)] = (weight, packed_weight)
        del layer.weight  # the parameter goes: the packed copy is the only one
        layer.__class__ = PackedLinear
        layer.packed_weight = shared[id(weight)][1]
        packed += 1
    return packed
