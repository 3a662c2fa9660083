"""How two runs of DINOv3 are compared: by the ONNX export's parity check and the bf16 check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors, in float64."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(x @ y / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-30))


def embedding_metrics(
    reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Smallest cosine similarity of the embeddings, and of patch features where returned."""
    embedding, patch_mean, patch_min = [], [], []
    for ref, cand in zip(reference, candidate, strict=True):
        embedding.append(cosine(ref["embedding"], cand["embedding"]))
        if ref.get("patch_features") is None:
            continue
        ref_p, cand_p = ref["patch_features"]["data"], cand["patch_features"]["data"]
        cosines = [cosine(a, b) for a, b in zip(ref_p, cand_p, strict=True)]
        patch_mean.append(float(np.mean(cosines)))
        patch_min.append(min(cosines))
    metrics = {"embedding_cosine_min": min(embedding)}
    if patch_mean:
        metrics["patch_cosine_mean_min"] = min(patch_mean)
        metrics["patch_cosine_min"] = min(patch_min)
    return metrics
