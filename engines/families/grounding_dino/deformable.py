"""GroundingDINO's multi-scale deformable attention on CPU as one weighted gather.

transformers' ``MultiScaleDeformableAttention`` (eager, the only CPU path) samples every level
with ``grid_sample`` into a (B·heads, dim, queries, points) tensor laid out channel-first,
stacks the levels into one tensor of 16 samples per query and head, multiplies by the attention
weights and sums. With the encoder's ~20,000 queries at 800×1200 that is four 80 MB samplings
whose writes stride across channels, a 330 MB stack and a product of the same size, per layer:
~1.0 s of each of the six encoder layers on 2 cores, about a third of the whole forward (torch
profiler; the kernel timed alone in ``benchmarks/bench_grounding_dino_msda.py``).

The same sum written as what it is: every output row (one query, one head) is a weighted sum of
64 rows of ``value`` (levels × points × the 4 bilinear corners), and ``value`` already is a
table of (batch, position, head) rows of ``dim`` contiguous floats. ``F.embedding_bag`` with
``per_sample_weights`` takes exactly that sum, reading each corner's row contiguously; the
bilinear weights (zero for a corner outside the map, as ``grid_sample``'s zero padding) are
multiplied by the attention weights first, on the (queries × heads × levels × points) tensors.
Per encoder layer 790 → 175 ms on the same machine (3.8-4.6x across runs). It computes the
same terms (in float64 the two agree to 1e-15; in float32 each is as far from float64 as the
other, ~1.6e-5 on outputs of magnitude ~2, see the unit tests), in another summation order.

Served on CPU only, in float32 and float64 (the parity reference); any other device, dtype or a
trace (the ONNX exporter's, which patches the class's own forward, see :mod:`.patches`) runs
the model's code.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch.nn import functional as F

# Where the gather is the measured, faster path (see the module docstring).
DTYPES = (torch.float32, torch.float64)


def gathered_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (bilinear, zero padding, ``align_corners=False``).

    Args:
        value: (B, S, heads, dim), S = the sum of the levels' height × width.
        spatial_shapes: Each level's (height, width), in the order ``value`` holds them.
        sampling_locations: (B, Q, heads, levels, points, 2), x and y in [0, 1] of the map.
        attention_weights: (B, Q, heads, levels, points).

    Returns:
        (B, Q, heads × dim), as transformers' ``MultiScaleDeformableAttention`` returns it.
    """
    batch, positions, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    device, dtype = value.device, sampling_locations.dtype
    starts = [0]
    for height, width in spatial_shapes[:-1]:
        starts.append(starts[-1] + height * width)
    heights = torch.tensor([h for h, _ in spatial_shapes], device=device, dtype=dtype)
    widths = torch.tensor([w for _, w in spatial_shapes], device=device, dtype=dtype)
    heights, widths = heights.view(levels, 1), widths.view(levels, 1)
    start = torch.tensor(starts, device=device, dtype=dtype).view(levels, 1)

    # grid_sample's pixel coordinates for align_corners=False: (2l - 1 + 1) · size / 2 - 0.5
    x = sampling_locations[..., 0] * widths - 0.5
    y = sampling_locations[..., 1] * heights - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    # A corner outside the map weighs nothing (zero padding); x0 + 1 is inside iff -1 <= x0 < W - 1.
    wx0 = (1 - fx) * ((x0 >= 0) & (x0 < widths))
    wx1 = fx * ((x0 >= -1) & (x0 < widths - 1))
    wy0 = (1 - fy) * ((y0 >= 0) & (y0 < heights)) * attention_weights
    wy1 = fy * ((y0 >= -1) & (y0 < heights - 1)) * attention_weights
    weights = torch.stack((wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1), dim=-1)

    # Row of corner (x0, y0) in value seen as a (B·S·heads, dim) table. Clamped to the map's
    # border first (a far-off location would not fit an int32); a corner whose weight is zero
    # may then point anywhere in the table, never outside it.
    x0 = torch.minimum(x0.clamp(min=-1), widths)
    y0 = torch.minimum(y0.clamp(min=-1), heights)
    int32 = torch.int32
    row = (y0 * widths + x0 + start).to(int32)
    row = row + (torch.arange(batch, device=device, dtype=int32) * positions).view(-1, 1, 1, 1, 1)
    row = row * heads + torch.arange(heads, device=device, dtype=int32).view(1, 1, -1, 1, 1)
    width_rows = widths.to(int32) * heads
    zero = torch.zeros_like(width_rows)
    corners = torch.stack((zero, zero + heads, width_rows, width_rows + heads), dim=-1)
    rows = batch * positions * heads
    index = (row.unsqueeze(-1) + corners).clamp_(0, rows - 1)

    samples = levels * points * 4
    out = F.embedding_bag(
        index.view(batch * queries * heads, samples),
        value.reshape(rows, dim),
        per_sample_weights=weights.view(batch * queries * heads, samples).to(value.dtype),
        mode="sum",
    )
    return out.view(batch, queries, heads * dim)


def _forward(
    self: torch.nn.Module,
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    value_spatial_shapes_list: list[tuple[int, int]],
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
) -> torch.Tensor:
    """The gather where it is the measured path; the model's own code everywhere else."""
    if value.device.type == "cpu" and value.dtype in DTYPES and not torch.jit.is_tracing():
        return gathered_deformable_attention(
            value, value_spatial_shapes_list, sampling_locations, attention_weights
        )
    own: Any = type(self).forward  # looked up now: the exporter's patches replace it
    return own(
        self,
        value,
        value_spatial_shapes,
        value_spatial_shapes_list,
        level_start_index,
        sampling_locations,
        attention_weights,
        im2col_step,
    )


def use_gathered_attention(model: torch.nn.Module) -> int:
    """Serve ``model``'s deformable attention kernels with the gather on CPU.

    Every ``MultiScaleDeformableAttention`` (GroundingDINO's and MM-GroundingDINO's: the
    parameter-free kernel each attention layer holds) of this model instance gets the gather as
    its ``forward``; the class, other models and the weights are untouched.

    Returns:
        How many kernels were switched (12 in the Swin-T configurations: 6 encoder, 6 decoder).
    """
    switched = 0
    for module in model.modules():
        if type(module).__name__ == "MultiScaleDeformableAttention":
            module.forward = types.MethodType(_forward, module)
            switched += 1
    return switched
