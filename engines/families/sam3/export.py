"""SAM3 to ONNX: three graphs (``vision``, ``text``, ``decoder``) and the parity check.

Parity compares instances matched by prompt and rank (ties may swap neighbours): scores,
boxes as a fraction of the image's longer side, and masks after resizing and thresholding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.drift import box_max_abs_diff
from engines.families.sam3.compare import mask_iou
from engines.families.sam3.options import Sam3Options
from engines.families.sam3.pipeline import Sam3Pipeline

# Export parity: every query of every prompt is kept (threshold 0), so the comparison covers
# all Q instances per prompt whatever random weights make of the scores.
PARITY_OPTIONS = Sam3Options(prompts=["cat", "a person"], threshold=0.0, output_format="rle")
# How far (in rank) a tied instance may have moved between runtimes, and the score difference
# within which a different instance at the same rank is taken for a tie rather than a mismatch.
TIE_WINDOW = 3


class Sam3Export(FamilyExport):
    """SAM3's graphs, exported from the torch pipeline, and how an export is checked."""

    # Compared on instances matched by prompt and rank (ties may swap neighbours); boxes as a
    # fraction of the image's longer side, masks after resizing and thresholding.
    parity_gates = {
        "scores_max_abs_diff": ("<=", 1e-4),
        "boxes_max_abs_diff_rel": ("<=", 1e-3),
        "mask_iou_min": (">=", 0.99),
        "instances_matched_fraction": (">=", 1.0),
    }

    def graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """``vision`` (dynamic batch), ``text`` and ``decoder`` (dynamic prompts).

        The decoder is traced with a batch-1 image embedding and two prompts, so the graph
        records the broadcast of the embedding to one row per prompt (an ``Expand`` to the
        prompt count, which also accepts an embedding that already has P rows). The spatial
        size is fixed: SAM3 always resizes to its input size. The legacy exporter drops the
        decoder inputs the detector never reads (the two finer position encodings); the ONNX
        core feeds only the inputs a graph lists.
        """
        assert isinstance(pipeline, Sam3Pipeline)
        height, width = pipeline.preprocessing.size
        pixels = np.random.default_rng(0).standard_normal((2, 3, height, width), np.float32)
        names = pipeline.vision_names
        # One image is enough for the decoder's example embedding.
        vision = pipeline.core.run("vision", {"pixel_values": pixels[:1]})
        embedding = {name: vision[name][:1] for name in names}
        tokens = pipeline.tokenizer(PARITY_OPTIONS.prompts)
        text = pipeline.encode_text(tokens)
        decoder_outputs = ["pred_masks", "pred_boxes", "pred_logits", "presence_logits"]
        return [
            OnnxGraph(
                name="vision",
                inputs={"pixel_values": pixels},
                outputs=names,
                dynamic_axes={"pixel_values": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            ),
            OnnxGraph(
                name="text",
                inputs={"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask},
                outputs=["text_features"],
                dynamic_axes={
                    "input_ids": {0: "prompts"},
                    "attention_mask": {0: "prompts"},
                    "text_features": {0: "prompts"},
                },
            ),
            OnnxGraph(
                name="decoder",
                inputs={
                    "text_features": text["text_features"],
                    "attention_mask": text["attention_mask"],
                    **embedding,
                },
                outputs=decoder_outputs,
                dynamic_axes={
                    "text_features": {0: "prompts"},
                    "attention_mask": {0: "prompts"},
                    # 1 (broadcast to every prompt) or the prompt count.
                    **{n: {0: "image_rows"} for n in names},
                    **{n: {0: "prompts"} for n in decoder_outputs},
                },
            ),
        ]

    def parity_options(self) -> list[Any]:
        """Two prompts, every query kept."""
        return [PARITY_OPTIONS]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Worst score, box and mask differences over instances matched by prompt and rank.

        Within one prompt the i-th instance of one run is paired with the i-th of the other;
        if that one differs (score beyond the gate, or box beyond it) the nearest unpaired
        instance within :data:`TIE_WINDOW` ranks is taken instead, so that two queries with
        near-equal scores that swapped places are still compared with their own selves.
        """
        scores, boxes, ious = [0.0], [0.0], [1.0]
        matched = total = 0
        for ref, cand in zip(reference, candidate, strict=True):
            width, height = ref["width"], ref["height"]
            side = float(max(width, height))
            prompts = {i["prompt_index"] for i in ref["instances"] + cand["instances"]}
            for prompt in sorted(prompts):
                r = [i for i in ref["instances"] if i["prompt_index"] == prompt]
                c = [i for i in cand["instances"] if i["prompt_index"] == prompt]
                total += max(len(r), len(c))
                for a, b in _pair_by_rank(r, c, side):
                    matched += 1
                    scores.append(abs(a["score"] - b["score"]))
                    boxes.append(box_max_abs_diff(a, b) / side)
                    ious.append(mask_iou(a, b, height, width))
        return {
            "scores_max_abs_diff": max(scores),
            "boxes_max_abs_diff_rel": max(boxes),
            "mask_iou_min": min(ious),
            "instances_matched_fraction": matched / total if total else 1.0,
        }


def _pair_by_rank(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]], side: float
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair one prompt's instances (both sorted by score) by rank, letting ties swap."""
    free = set(range(len(candidate)))
    pairs = []
    for i, a in enumerate(reference):
        if i in free:
            b = candidate[i]
            if abs(a["score"] - b["score"]) <= 1e-4 and box_max_abs_diff(a, b) <= 1e-3 * side:
                free.discard(i)
                pairs.append((a, b))
                continue
        window = [j for j in free if abs(j - i) <= TIE_WINDOW]
        if not window:
            continue
        j = min(
            window,
            key=lambda k: (
                box_max_abs_diff(a, candidate[k]) / side + abs(a["score"] - candidate[k]["score"])
            ),
        )
        free.discard(j)
        pairs.append((a, candidate[j]))
    return pairs


EXPORT = Sam3Export()
