"""How far a detector's results moved between two runs (float32 and bf16 weights).

The bf16 check on CPU runs a family twice on the same photos and options. Detections are
compared by what they are, not by rank: within one prompt each confident detection of one run
is matched to the other run's detection of the same prompt whose box overlaps it most. Only
detections clearly above the threshold must be found in the other run (the check runs at a
lower threshold than they must clear), so a score that crosses the threshold by rounding is
not a failure, while one that appears, vanishes or moves is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Detections must overlap at least this much (box IoU) to be the same object.
MATCH_IOU = 0.5


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest coordinate difference of two detections' boxes (pixels)."""
    return float(np.max(np.abs(np.asarray(a["box"], np.float64) - np.asarray(b["box"]))))


def detection_drift(
    reference: Sequence[dict[str, Any]],
    candidate: Sequence[dict[str, Any]],
    *,
    items: str,
    sure: float,
    pair_metric: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], float] | None = None,
) -> dict[str, float]:
    """Worst drift of detections matched across two runs of the same images and options.

    Args:
        reference: The float32 run's results, one per image (``width``, ``height`` and a list
            of detections under ``items``, each with ``prompt_index``, ``score`` and ``box``).
        candidate: The other run's results, in the same order.
        items: The key of each result's detection list (``instances``, ``detections``).
        sure: Detections scoring at least this in either run must be matched in the other.
        pair_metric: Also computed for each matched pair (``(ref, cand, result)`` → value);
            its minimum is reported as ``pair_metric_min`` (SAM3: the masks' IoU).

    Returns:
        ``sure_matched_fraction`` (confident detections of either run found in the other),
        ``scores_max_abs_diff`` and ``boxes_max_abs_diff_rel`` (box coordinates as a fraction
        of the image's longer side) over matched pairs, and ``pair_metric_min`` if asked.
    """
    scores, boxes, pairs_metric = [0.0], [0.0], [1.0]
    sure_total = sure_found = 0
    for ref, cand in zip(reference, candidate, strict=True):
        side = float(max(ref["width"], ref["height"]))
        for a_run, b_run in ((ref[items], cand[items]), (cand[items], ref[items])):
            for a in a_run:
                if a["score"] < sure:
                    continue
                sure_total += 1
                same_prompt = [b for b in b_run if b["prompt_index"] == a["prompt_index"]]
                best = max(same_prompt, key=lambda b: box_iou(a["box"], b["box"]), default=None)
                if best is None or box_iou(a["box"], best["box"]) < MATCH_IOU:
                    continue
                sure_found += 1
                scores.append(abs(a["score"] - best["score"]))
                boxes.append(box_max_abs_diff(a, best) / side)
                if pair_metric is not None:
                    pairs_metric.append(pair_metric(a, best, ref))
    metrics = {
        "sure_matched_fraction": sure_found / sure_total if sure_total else 1.0,
        "scores_max_abs_diff": max(scores),
        "boxes_max_abs_diff_rel": max(boxes),
    }
    if pair_metric is not None:
        metrics["pair_metric_min"] = min(pairs_metric)
    return metrics
