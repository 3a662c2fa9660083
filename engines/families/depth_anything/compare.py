"""How two runs of Depth Anything are compared: by the export's parity check and the bf16 check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def rel_l2(reference: Any, candidate: Any) -> float:
    """Relative L2 error ``|candidate - reference| / |reference|``, in float64."""
    x, y = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return float(np.linalg.norm(x - y) / max(float(np.linalg.norm(x)), 1e-30))


def depth_metrics(
    reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Worst relative L2 error of the depth maps, of intrinsics and of mean confidence."""
    depth, intrinsics, confidence = [], [], []
    for ref, cand in zip(reference, candidate, strict=True):
        depth.append(rel_l2(ref["depth"], cand["depth"]))
        if ref.get("intrinsics") is not None:
            intrinsics.append(rel_l2(ref["intrinsics"], cand["intrinsics"]))
        if ref.get("confidence") is not None:
            mean = ref["confidence"]["mean"]
            confidence.append(abs(cand["confidence"]["mean"] - mean) / max(abs(mean), 1e-30))
    metrics = {"depth_rel_l2_max": max(depth)}
    if intrinsics:
        metrics["intrinsics_rel_max"] = max(intrinsics)
    if confidence:
        metrics["confidence_mean_rel_max"] = max(confidence)
    return metrics
