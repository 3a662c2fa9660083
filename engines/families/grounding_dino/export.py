"""GroundingDINO to ONNX: the one graph to export, and how an export is checked against torch.

The trace runs inside :mod:`.patches` (exportable stand-ins for code the legacy exporter
cannot trace); the parity check compares two runs' queries, paired by the encoder proposal each
starts from, and the detections they keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.families.grounding_dino.detections import to_pixels
from engines.families.grounding_dino.images import pad_batch
from engines.families.grounding_dino.options import GroundingDinoOptions
from engines.families.grounding_dino.patches import patched
from engines.families.grounding_dino.pipeline import GroundingDinoPipeline


class ParityOptions(GroundingDinoOptions, kw_only=True, forbid_unknown_fields=True):
    """The family's options plus ``keep_raw``: the raw queries kept in each result.

    The pipeline reads ``keep_raw`` with ``getattr`` (default False), so requests never see it.
    """

    keep_raw: bool = True


# Export parity: low thresholds (random weights), and the raw queries kept in the results.
PARITY_OPTIONS = ParityOptions(
    prompts=["a cat", "a person", "rocket"], box_threshold=0.7, text_threshold=0.4
)
# Two runs' queries are the same query when they start from the same proposal: reference
# points within this much (fractions of the image; one runtime's rounding moves them ~1e-7).
SAME_PROPOSAL = 1e-4


class GroundingDinoExport(FamilyExport):
    """One graph ``model``; parity over queries paired by their proposals."""

    # The top-k query selection flips between runtimes on tiny float differences (two
    # near-equal encoder scores swap ranks, or one replaces the other), which changes those
    # queries' outputs (content queries are learned per rank) and, through the decoder's
    # self-attention, every query of that image a little. So queries are identified by the
    # proposal they start from, and compared where both runs selected the same proposals in
    # the same order; detections are compared per query there. The fraction of images with the
    # same selection is gated too, so that the continuous gates never pass for want of anything
    # to compare (on a full-size random Swin-T model, ORT fp32 kept float64's selection on 2 of
    # the 4 photos, torch float32 on none).
    parity_gates = {
        "query_probs_max_abs_diff": ("<=", 1e-4),
        "query_boxes_max_abs_diff": ("<=", 1e-3),
        "scores_max_abs_diff": ("<=", 1e-4),
        "boxes_max_abs_diff_rel": ("<=", 1e-3),
        "detections_matched_fraction": (">=", 0.95),
        "queries_matched_fraction": (">=", 0.98),
        "images_same_selection_fraction": (">=", 0.25),
    }

    def graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """The whole model as one graph, dynamic in batch, height, width and text length.

        The backbone is not split off: it is ~14 % of the time and sees only pixels, so a
        separate graph would buy nothing but an extra copy of its features. The example is a
        padded batch of a landscape and a portrait image at the checkpoint's sizes (small
        sizes would make Swin shrink its windows, and the trace keep that). The trace runs
        inside :mod:`.patches` (the text mask without ``isin``/``cummax``, Swin padding
        and cropping for every size, the deformable attention's sizes from the traced shapes).
        """
        assert isinstance(pipeline, GroundingDinoPipeline)
        core = pipeline.core
        core.graphs["model"] = patched(core.graphs["model"])  # type: ignore[attr-defined]
        rng = np.random.default_rng(0)
        images = [
            rng.standard_normal((3, *pipeline.preprocessing.output_size(w, h)), np.float32)
            for w, h in ((640, 480), (480, 640))
        ]
        pixel_values, pixel_mask = pad_batch(images)
        caption = pipeline.caption(PARITY_OPTIONS.prompts)
        text = ("input_ids", "token_type_ids", "attention_mask")
        return [
            OnnxGraph(
                name="model",
                inputs={
                    "pixel_values": pixel_values,
                    "pixel_mask": pixel_mask,
                    **caption.arrays(2),
                },
                outputs=["logits", "pred_boxes", "reference_points"],
                dynamic_axes={
                    "pixel_values": {0: "batch", 2: "height", 3: "width"},
                    "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                    **{name: {0: "batch", 1: "text"} for name in text},
                    "logits": {0: "batch", 2: "text"},
                    "pred_boxes": {0: "batch"},
                    "reference_points": {0: "batch"},
                },
            )
        ]

    def parity_options(self) -> list[GroundingDinoOptions]:
        """Three prompts, low thresholds, raw queries kept."""
        return [PARITY_OPTIONS]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Queries and detections of two runs, paired by the proposal they start from.

        Per image, queries are paired by reference point (:data:`SAME_PROPOSAL`); the image
        counts as having the same selection when every query is paired with the query of the
        same rank (content queries are learned per rank, so a swap matters). There, the paired
        queries' probabilities (sigmoid of the finite logits) and boxes (cxcywh, fractions of
        the image) are compared, and so are the detections of paired queries (score; box in
        pixels over the image's longer side), a detection only one run kept counting as
        unmatched. Images whose selections differ give only ``flipped_query_probs_max_abs_diff``
        (informative); if no image has the same selection (a drifting int8 artifact), all the
        figures are taken over the paired queries of all images instead. ``logits_max_abs_diff`` and
        ``detections_per_run`` are informative.
        """
        keys = ("probs", "boxes", "logits", "scores", "detection_boxes", "found", "total")
        same: dict[str, list[float]] = {k: [0.0] for k in keys}
        flipped: dict[str, list[float]] = {k: [0.0] for k in keys}
        paired = queries = same_images = detected = 0
        for ref, cand in zip(reference, candidate, strict=True):
            a, b = ref["raw"], cand["raw"]
            pairs = _pair_queries(a["reference_points"], b["reference_points"])
            count = max(len(a["reference_points"]), len(b["reference_points"]))
            paired, queries = paired + len(pairs), queries + count
            detected = max(detected, len(ref["detections"]), len(cand["detections"]))
            # The decoder's content queries are learned per rank: two proposals that swapped
            # ranks change their own outputs (and, through self-attention, everyone's a little).
            identical = len(pairs) == count and all(i == j for i, j in pairs)
            figures = same if identical else flipped
            same_images += identical
            for i, j in pairs:
                x, y = a["logits"][i], b["logits"][j]
                finite = np.isfinite(x)
                if not np.array_equal(finite, np.isfinite(y)):
                    figures["probs"].append(float("inf"))
                    continue
                figures["logits"].append(_max_abs(x[finite], y[finite]))
                figures["probs"].append(_max_abs(_sigmoid(x[finite]), _sigmoid(y[finite])))
                figures["boxes"].append(_max_abs(a["pred_boxes"][i], b["pred_boxes"][j]))
            # Detections of paired queries; one kept by a single run (or by a query the other
            # run did not select) counts as unmatched.
            side = float(max(ref["width"], ref["height"]))
            by_query_a, by_query_b = _detections_by_query(ref), _detections_by_query(cand)
            partner = dict(pairs)
            matched = [(i, partner[i]) for i in by_query_a if partner.get(i) in by_query_b]
            figures["found"].append(len(matched))
            figures["total"].append(len(by_query_a) + len(by_query_b) - len(matched))
            for i, j in matched:
                da, db = by_query_a[i], by_query_b[j]
                figures["scores"].append(abs(da["score"] - db["score"]))
                figures["detection_boxes"].append(
                    _max_abs(np.asarray(da["box"]), np.asarray(db["box"])) / side
                )
        # Gated figures come from images with the same selection, or from all if there is none.
        gated = same if same_images else {k: same[k] + flipped[k] for k in keys}
        total = sum(gated["total"])
        return {
            "query_probs_max_abs_diff": max(gated["probs"]),
            "query_boxes_max_abs_diff": max(gated["boxes"]),
            "logits_max_abs_diff": max(gated["logits"]),
            "queries_matched_fraction": paired / queries if queries else 1.0,
            "images_same_selection_fraction": same_images / len(reference) if reference else 1.0,
            "flipped_query_probs_max_abs_diff": max(flipped["probs"]),
            "scores_max_abs_diff": max(gated["scores"]),
            "boxes_max_abs_diff_rel": max(gated["detection_boxes"]),
            "detections_matched_fraction": sum(gated["found"]) / total if total else 1.0,
            "detections_per_run": float(detected),
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(diff.max(initial=0.0))


def _pair_queries(reference: np.ndarray, candidate: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j) of queries of two runs that start from the same proposal.

    Query i is paired with query i when their reference points agree, else with the nearest
    unpaired query that agrees (the selection shifted ranks), else with none.
    """
    distance = np.abs(
        reference[:, None, :].astype(np.float64) - candidate[None, :, :].astype(np.float64)
    ).max(-1)
    free = np.ones(len(candidate), bool)
    pairs = []
    for i in range(len(reference)):
        if i < len(candidate) and free[i] and distance[i, i] <= SAME_PROPOSAL:
            j = i
        else:
            row = np.where(free, distance[i], np.inf)
            j = int(row.argmin()) if len(row) else -1
            if j < 0 or row[j] > SAME_PROPOSAL:
                continue
        free[j] = False
        pairs.append((i, j))
    return pairs


def _detections_by_query(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The detections of one post-processed image, keyed by the query each came from.

    A detection is recognised by its box and score, which are the query's box in pixels and
    best probability as :func:`detections` computed them from the same raw arrays.
    """
    found = result["detections"]
    if not found:
        return {}
    raw = result["raw"]
    pixels = to_pixels(raw["pred_boxes"], result["width"], result["height"])
    best = _sigmoid(raw["logits"]).max(axis=1)
    by_query = {}
    for detection in found:
        distance = np.abs(pixels - np.asarray(detection["box"], np.float32)).max(axis=1)
        distance += np.abs(best - detection["score"])
        by_query[int(distance.argmin())] = detection
    return by_query


EXPORT = GroundingDinoExport()
