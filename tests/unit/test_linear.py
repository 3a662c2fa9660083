"""bf16 linear layers prepacked for oneDNN (engines/linear.py) and the served models using them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from engines.base import Family, LoadRequest, VariantSpec, run_pipeline
from engines.linear import PackedLinear, packed_bytes, packing_supported, use_packed_linears
from engines.torch_runtime import TorchCore

ASSETS = Path(__file__).resolve().parents[2] / "engines" / "assets"
SUPPORTED = packing_supported()  # oneDNN runs bf16 here (not on an AVX2-only CPU)
# Packed and plain run oneDNN kernels that may block the sums differently on other CPUs:
# bf16's own resolution (8 bits of mantissa) bounds what may differ.
RTOL, ATOL = 1.6e-2, 1e-2


def linear(bias: bool = True, out: int = 96, inp: int = 64) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(inp, out, bias=bias).to(torch.bfloat16).eval()


@contextmanager
def weight_reads() -> Iterator[list[int]]:
    """Count reads of a packed layer's dense ``weight`` (each one rebuilds the matrix)."""
    reads = [0]
    original = PackedLinear.__dict__["weight"]
    assert isinstance(original, property) and original.fget is not None
    rebuild = original.fget

    def counted(self: PackedLinear) -> torch.Tensor:
        reads[0] += 1
        return rebuild(self)

    PackedLinear.weight = property(counted)  # type: ignore[assignment, method-assign]
    try:
        yield reads
    finally:
        PackedLinear.weight = original  # type: ignore[assignment, method-assign]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "make_input",
    [
        lambda: torch.randn(7, 64),
        lambda: torch.randn(2, 201, 64),
        lambda: torch.randn(201, 2, 64).transpose(0, 1),  # not contiguous
    ],
    ids=["rows", "batch", "transposed"],
)
def test_a_packed_layer_computes_what_the_linear_computes(
    bias: bool, make_input: Callable[[], torch.Tensor]
) -> None:
    layer = linear(bias)
    dense = layer.weight.detach().clone()
    x = make_input().to(torch.bfloat16)
    with torch.inference_mode():
        expected = F.linear(x, dense, layer.bias)
        assert use_packed_linears(layer) == (1 if SUPPORTED else 0)
        ours = layer(x)
    assert isinstance(layer, PackedLinear) == SUPPORTED
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=ATOL)
    if SUPPORTED:
        assert "weight" not in dict(layer.named_parameters())  # no second, dense copy
        assert torch.equal(layer.weight, dense)  # read back on demand


def test_only_plain_bf16_cpu_layers_that_own_their_weight_are_packed() -> None:
    if not SUPPORTED:
        assert use_packed_linears(nn.Sequential(linear(), linear())) == 0
        return
    shared = torch.randn(3 * 96, 64).to(torch.bfloat16)
    view = linear()
    view.weight = nn.Parameter(shared[:96], requires_grad=False)  # a view into a larger matrix

    class Subclassed(nn.Linear):
        pass

    model = nn.Sequential(linear(), nn.Linear(64, 96).eval(), view, Subclassed(64, 96))
    model[3].to(torch.bfloat16)
    assert use_packed_linears(model) == 1
    assert [type(m).__name__ for m in model] == [
        "PackedLinear",
        "Linear",  # float32
        "Linear",  # a view: DINOv3's q/k/v share one packed projection
        "Subclassed",  # its own forward may read the weight
    ]


def test_the_dense_weight_serves_autograd_and_other_dtypes_a_trace_is_refused() -> None:
    layer = linear()
    dense = layer.weight.detach().clone()
    if not use_packed_linears(layer):  # this CPU cannot pack (oneDNN without bf16)
        assert type(layer) is nn.Linear and not SUPPORTED
        return
    x = torch.randn(5, 64).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="cannot be traced: unpack it first"):
        torch.jit.trace(layer, x, check_trace=False)
    with torch.inference_mode():  # another dtype: the dense weight, F.linear's own error
        with pytest.raises(RuntimeError, match="dtype"):
            layer(x.float())
    with torch.enable_grad():
        grad_x = x.clone().requires_grad_()
        layer(grad_x).float().sum().backward()
    torch.testing.assert_close(grad_x.grad, torch.ones(5, 96).to(torch.bfloat16) @ dense)


def test_a_move_or_cast_unpacks_the_layer_first() -> None:
    layer = linear()
    dense = layer.weight.detach().clone()
    model = nn.Sequential(layer)
    if not use_packed_linears(model):  # this CPU cannot pack (oneDNN without bf16)
        assert type(model[0]) is nn.Linear and not SUPPORTED
        return
    model.float()
    assert type(model[0]) is nn.Linear
    assert torch.equal(model[0].weight, dense.float())
    assert "weight" in dict(model[0].named_parameters())


def test_memory_accounting_counts_the_packed_weights() -> None:
    model = nn.Sequential(linear(), nn.GELU(), linear(inp=96))
    # The same bf16 layers under a core that does not pack (its dtype is not bf16):
    unpacked = TorchCore(nn.Sequential(linear(), nn.GELU(), linear(inp=96)), {}, "cpu", "float32")
    core = TorchCore(model, {}, "cpu", "bfloat16")  # packs where it can
    assert core.memory_bytes() == unpacked.memory_bytes()  # one copy of each weight, counted
    assert packed_bytes(model) == (96 * 64 + 96 * 96) * 2 * SUPPORTED
    tied = nn.Sequential(linear(), linear())
    tied[1].weight = tied[0].weight  # one parameter, two layers (GroundingDINO's box heads)
    bytes_before = TorchCore(tied, {}, "cpu", "float32").memory_bytes()
    assert TorchCore(tied, {}, "cpu", "bfloat16").memory_bytes() == bytes_before
    if SUPPORTED:
        assert tied[0].packed_weight is tied[1].packed_weight  # packed once


def _families(tmp_path: Path) -> list[tuple[Family, Path, Any, bool]]:
    """Each family's tiny checkpoint, the options its bf16 check runs, and whether to compare.

    GroundingDINO has no bf16 check (it is served in float32): transformers' own bf16 model
    gives NaN logits on CPU, packed or not, so only its packing and weight reads are checked.
    """
    from engines.families.depth_anything.family import DepthAnythingFamily
    from engines.families.depth_anything.tiny import write_tiny as write_depth
    from engines.families.dinov3.family import Dinov3Family
    from engines.families.dinov3.tiny import write_tiny as write_dinov3
    from engines.families.grounding_dino.family import GroundingDinoFamily
    from engines.families.grounding_dino.tiny import write_tiny as write_gdino
    from engines.families.sam3.family import Sam3Family
    from engines.families.sam3.tiny import write_tiny as write_sam3

    depth, dinov3, sam3 = DepthAnythingFamily(), Dinov3Family(), Sam3Family()
    gdino = GroundingDinoFamily()
    depths = write_depth(tmp_path)
    return [
        (dinov3, tmp_path / write_dinov3(tmp_path)["tiny"], dinov3.precision_options(), True),
        (depth, tmp_path / depths["tiny-v2"], depth.precision_options(), True),
        (depth, tmp_path / depths["tiny"], depth.precision_options(), True),  # our DA3 port
        (sam3, tmp_path / write_sam3(tmp_path)["tiny"], sam3.precision_options(), True),
        (
            gdino,
            tmp_path / write_gdino(tmp_path)["tiny"],
            gdino.options_type(prompts=["cat"]),
            False,
        ),
    ]


def _module(pipeline: Any) -> nn.Module:
    core = pipeline.core
    assert isinstance(core, TorchCore)
    return core.module


def _unpacked(module: nn.Module) -> None:
    for layer in list(module.modules()):
        if isinstance(layer, PackedLinear):
            layer.unpack()


def _close(ours: Any, theirs: Any) -> None:
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            _close(ours[key], theirs[key])
    elif isinstance(ours, list | tuple) and ours and not isinstance(ours[0], str):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            _close(a, b)
    elif isinstance(ours, np.ndarray | float) and not isinstance(ours, bool):
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
    else:
        assert ours == theirs


def test_served_bf16_models_pack_their_layers_and_never_read_the_dense_weight(
    tmp_path: Path,
) -> None:
    """Every family loaded in bf16 on CPU: packed, the same results, no dense weight rebuilt."""
    image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
    for family, checkpoint, options, compare in _families(tmp_path):
        request = LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "bfloat16", 2)
        served = family.load_torch(request)
        plain = family.load_torch(request)
        _unpacked(_module(plain))
        packed = sum(isinstance(m, PackedLinear) for m in _module(served).modules())
        assert (packed > 0) == SUPPORTED, family.name
        assert not any(isinstance(m, PackedLinear) for m in _module(plain).modules())
        with weight_reads() as reads:
            ours = run_pipeline(served, [image], options)
        assert reads[0] == 0, f"{family.name}: the forward rebuilt a dense weight"
        if compare:
            _close(ours, run_pipeline(plain, [image], options))
