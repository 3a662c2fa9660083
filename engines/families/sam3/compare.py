"""How two runs of SAM3 are compared: by the export's parity check and the bf16 check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.drift import detection_drift
from engines.masks import decode_mask

# Instances scoring at least this (the default threshold) must be found in the other run; the
# bf16 check keeps every query (threshold 0), so rounding across 0.5 is no mismatch.
SURE_SCORE = 0.5


def mask_iou(a: dict[str, Any], b: dict[str, Any], height: int, width: int) -> float:
    """IoU of two instances' RLE masks (1.0 when both are empty)."""
    x = decode_mask(a["mask"], "rle", height, width)
    y = decode_mask(b["mask"], "rle", height, width)
    union = int(np.logical_or(x, y).sum())
    return 1.0 if union == 0 else int(np.logical_and(x, y).sum()) / union


def top_scores(result: dict[str, Any], prompts: int) -> np.ndarray:
    """Each prompt's highest instance score in one image's result (0 where it has none)."""
    top = np.zeros(prompts)
    for instance in result["instances"]:
        index = instance["prompt_index"]
        top[index] = max(top[index], instance["score"])
    return top


def precision_metrics(
    reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Confident instances matched across the runs by box; their score, box and mask drift.

    Also each prompt's top score in each image, which exists whatever the weights make of the
    photo (the check keeps every query), so that the gate always compares something.
    """
    metrics = detection_drift(
        reference,
        candidate,
        items="instances",
        sure=SURE_SCORE,
        pair_metric=lambda a, b, image: mask_iou(a, b, image["height"], image["width"]),
    )
    metrics["mask_iou_min"] = metrics.pop("pair_metric_min")
    prompts = 1 + max(
        (i["prompt_index"] for r in (*reference, *candidate) for i in r["instances"]), default=0
    )
    metrics["top_score_abs_diff_max"] = max(
        (
            float(np.abs(top_scores(ref, prompts) - top_scores(cand, prompts)).max())
            for ref, cand in zip(reference, candidate, strict=True)
        ),
        default=0.0,
    )
    return metrics
