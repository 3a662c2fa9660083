"""Reference-view selection of a multi-view DA3 forward, in tensor arithmetic only.

The reference network picks one view of a scene as the reference (its camera token differs,
and predicted poses are in its frame), moves it to the front before the first local/global
block and restores the input order of every output. The choice reads each view's class token.
Every strategy is written without branching on tensor values, so that an exported graph
serves all of them, with the number of views dynamic.

The saddle strategies can be decided by rounding: where every pair of views is positively
similar, a view's range of similarities runs from its diagonal entry (1 - 1, about 0) to its
best match, so the two views that are each other's best match tie but for rounding. The
reference's choice then depends on the last bits of its arithmetic, which a port (or another
runtime) reproduces only where its values are bit-identical; both choices are equally good by
the strategy's own measure.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Index i of REF_VIEW_STRATEGIES is strategy i of an exported graph's ``ref_strategy`` input.
from engines.families.depth_anything.options import REF_VIEW_STRATEGIES as REF_VIEW_STRATEGIES

# The reference selects a reference view only for scenes of at least this many views
# (its THRESH_FOR_REF_SELECTION), and never when cameras are given.
MIN_VIEWS_FOR_SELECTION = 3

Count = int | Tensor  # a number of views: a plain int, or a traced size under ONNX export


def _unit_range(metric: Tensor) -> Tensor:
    """Map ``metric`` [views] onto [0, 1] by its minimum and maximum (as the reference)."""
    low = metric.min(dim=0, keepdim=True).values
    high = metric.max(dim=0, keepdim=True).values
    return (metric - low) / (high - low + 1e-8)


def strategy_indices(tokens: Tensor) -> Tensor:
    """The view each strategy picks, from the views' class tokens.

    ``saddle_balanced`` takes the view closest to the middle of the range of three metrics
    (mean cosine similarity to the other views, token norm, variance of the unit token);
    ``saddle_sim_range`` the view with the widest range of similarities to the others.
    Both follow the reference operation by operation, so that near-ties fall the same way.

    Args:
        tokens: [views, dim] class token of each view.

    Returns:
        [4] long indices, in :data:`REF_VIEW_STRATEGIES` order.

    """
    views = tokens.shape[0]
    index = torch.arange(views, device=tokens.device)
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    # Batched as the reference multiplies: near-ties fall by rounding (module docstring).
    similarity = (unit[None] @ unit[None].transpose(1, 2))[0]
    # Minus the identity: each view's similarity to itself (1) drops out of the statistics.
    similarity = similarity - (index[:, None] == index[None]).to(similarity.dtype)
    mean_similarity = similarity.sum(dim=-1) / (views - 1)
    balance = (
        (_unit_range(mean_similarity) - 0.5).abs()
        + (_unit_range(tokens.norm(dim=-1)) - 0.5).abs()
        + (_unit_range(unit.var(dim=-1)) - 0.5).abs()
    )
    spread = similarity.max(dim=-1).values - similarity.min(dim=-1).values
    first = torch.zeros_like(index[0])
    return torch.stack((first, index[views // 2], balance.argmin(), spread.argmax()))


def enough_views(views: Count, device: torch.device) -> Tensor:
    """Bool scalar: ``views >= MIN_VIEWS_FOR_SELECTION``, a graph value under ONNX export."""
    # Comparing a traced size with an int would be frozen into the trace as a constant.
    index = torch.arange(views, device=device)  # type: ignore[arg-type]
    return (index == MIN_VIEWS_FOR_SELECTION - 1).any()


def reference_view(tokens: Tensor, strategy: int | Tensor, selects: Tensor) -> Tensor:
    """The reference view: ``strategy``'s pick where ``selects``, else view 0 (no reordering).

    Args:
        tokens: [views, dim] class token of each view.
        strategy: Index into :data:`REF_VIEW_STRATEGIES`.
        selects: Bool scalar: whether a reference view is selected at all (the reference
            selects for :func:`enough_views` and no given cameras).

    Returns:
        A long scalar.

    """
    return torch.where(selects, strategy_indices(tokens)[strategy], 0)


def reference_first(reference: Tensor, views: Count) -> Tensor:
    """[views] gather indices that move view ``reference`` to the front.

    The other views keep their order: reference 2 of 5 views gives ``[2, 0, 1, 3, 4]``.
    """
    positions = torch.arange(views, device=reference.device)  # type: ignore[arg-type]
    shifted = (positions > 0) & (positions <= reference)
    order = torch.where(shifted, positions - 1, positions)
    return torch.where(positions == 0, reference, order)


def input_order(reference: Tensor, views: Count) -> Tensor:
    """[views] gather indices that undo :func:`reference_first`."""
    positions = torch.arange(views, device=reference.device)  # type: ignore[arg-type]
    order = torch.where(positions < reference, positions + 1, positions)
    return torch.where(positions == reference, 0, order)
