"""Post-processing of DA3 depth: the mono/metric sky rule and metric conversion.

Both are plain tensor functions without data-dependent Python control flow, so they trace
into an ONNX graph as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

SKY_THRESHOLD = 0.3
SKY_QUANTILE = 0.99
MIN_REGION_PIXELS = 10  # the rule is skipped when sky or non-sky has at most this many pixels
METRIC_FOCAL_DIVISOR = 300.0


def masked_quantile(values: Tensor, keep: Tensor, q: float) -> Tensor:
    """Per-row ``torch.quantile`` (linear interpolation) of ``values`` where ``keep`` is True.

    Args:
        values: [B, M] values.
        keep: [B, M] booleans; rows with nothing kept give +inf.
        q: Quantile in [0, 1].

    Returns:
        [B] quantiles.

    """
    ordered = torch.sort(torch.where(keep, values, torch.full_like(values, torch.inf)), -1).values
    count = keep.sum(-1)
    rank = torch.tensor(q, dtype=torch.float32, device=values.device) * (count - 1).float()
    last = int(values.shape[-1]) - 1
    below, above = rank.floor().clamp(0, last), rank.ceil().clamp(0, last)
    low = ordered.gather(-1, below.long()[:, None])[:, 0]
    high = ordered.gather(-1, above.long()[:, None])[:, 0]
    return torch.lerp(low, high, (rank - below).to(values.dtype))


def apply_sky_rule(
    depth: Tensor,
    sky: Tensor,
    threshold: float = SKY_THRESHOLD,
    quantile: float = SKY_QUANTILE,
) -> Tensor:
    """Give sky pixels the 99th-percentile depth of the non-sky pixels of the same image.

    This is the reference's rule for mono/metric models (``sky >= 0.3`` is sky; nothing changes
    when either region has 10 pixels or fewer). Unlike the reference, which pools the whole
    batch and samples 100 000 pixels when there are more, every image is treated on its own and
    the quantile uses all of its pixels: identical for one image under 100 000 non-sky pixels.

    Args:
        depth: [B, H, W] depth.
        sky: [B, H, W] sky score.
        threshold: Sky if ``sky >= threshold``.
        quantile: Quantile of the non-sky depth given to sky pixels.

    Returns:
        A new [B, H, W] depth tensor.

    """
    flat_depth, is_sky = depth.flatten(1), sky.flatten(1) >= threshold
    not_sky = ~is_sky
    fill = masked_quantile(flat_depth, not_sky, quantile)
    sky_count = is_sky.sum(-1)
    enough = (sky_count > MIN_REGION_PIXELS) & (flat_depth.shape[1] - sky_count > MIN_REGION_PIXELS)
    replace = is_sky & enough[:, None]
    return torch.where(replace, fill[:, None], flat_depth).view_as(depth)


def metric_depth_m(depth: Tensor, focal_px: float | Tensor) -> Tensor:
    """Metres from DA3METRIC-LARGE output, per the package FAQ: ``focal_px * depth / 300``.

    Args:
        depth: [B, H, W] (or [H, W]) network output.
        focal_px: Focal length in pixels of the network input (mean of fx and fy): a number,
            or a [B] tensor for per-image focals.

    """
    if isinstance(focal_px, Tensor) and focal_px.ndim == 1:
        focal_px = focal_px[:, None, None]
    return focal_px * depth / METRIC_FOCAL_DIVISOR
