"""GroundingDINO post-processing: queries to scored, labelled boxes in input pixels.

Follows transformers' ``post_process_grounded_object_detection``: per query, the sigmoid of the
text logits; the score is their maximum over all text tokens, and the query is kept when the
score is above ``box_threshold``; tokens above ``text_threshold`` decide the label. Both
comparisons are strict, as in the reference. Where the reference decodes every token above
``text_threshold`` into a string (which can mix several prompts or cut one), we report the one
prompt owning the most probable such token (the maximum, not the sum, so long prompts are not
favoured), and drop a query whose only tokens above ``text_threshold`` are [CLS], [SEP] or the
``.`` separators: it matched no prompt. ``pred_boxes`` are (cx, cy, w, h) relative to the
unpadded image, so they scale by the input image's size whatever padding the batch had; boxes
are clipped to the image and sorted by score, highest first (ties keep query order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.families.grounding_dino.text import NO_PROMPT, Caption


def detections(
    logits: np.ndarray,
    boxes: np.ndarray,
    caption: Caption,
    width: int,
    height: int,
    box_threshold: float,
    text_threshold: float,
) -> list[dict[str, Any]]:
    """Turn one image's queries into detections.

    Args:
        logits: (Q, T) text logits, T = the caption's token count.
        boxes: (Q, 4) cxcywh in [0, 1] of the unpadded image.
        caption: The request's prompts and token-to-prompt map.
        width: Input image width in pixels.
        height: Input image height in pixels.
        box_threshold: Keep queries whose best token probability is above this.
        text_threshold: Tokens above this may name the detection.

    Returns:
        ``{"label", "prompt_index", "score", "box"}`` dicts, by descending score.
    """
    probs = _sigmoid(logits[:, : len(caption.input_ids)])
    scores = probs.max(axis=1)
    kept = np.flatnonzero(scores > box_threshold)
    if kept.size == 0:
        return []
    content = caption.token_prompt != NO_PROMPT
    naming = np.where((probs[kept] > text_threshold) & content, probs[kept], 0.0)
    best_token = naming.argmax(axis=1)
    named = naming[np.arange(kept.size), best_token] > 0
    kept, best_token = kept[named], best_token[named]
    prompt_index = caption.token_prompt[best_token]
    xyxy = to_pixels(boxes[kept], width, height)
    order = np.argsort(-scores[kept], kind="stable")
    return [
        {
            "label": caption.prompts[int(prompt_index[i])],
            "prompt_index": int(prompt_index[i]),
            "score": float(scores[kept[i]]),
            "box": [float(v) for v in xyxy[i]],
        }
        for i in order
    ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):  # exp(+inf) on masked tokens gives the right 0
        return 1.0 / (1.0 + np.exp(-x))


def to_pixels(cxcywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N, 4) cxcywh in [0, 1] as (N, 4) float32 xyxy in pixels, clipped to the image."""
    cx, cy, w, h = cxcywh.astype(np.float32).T
    xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
    xyxy *= np.asarray([width, height, width, height], np.float32)
    np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
    return xyxy
