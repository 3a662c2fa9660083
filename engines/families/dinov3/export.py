"""Exporting DINOv3 to ONNX: one graph, and how its parity with torch is measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.families.dinov3.options import Dinov3Options
from engines.families.dinov3.pipeline import Dinov3Pipeline


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors, in float64."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(x @ y / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-30))


class Dinov3Export(FamilyExport):
    """One graph ``model`` (``pixel_values`` → ``last_hidden_state``, ``pooler_output``)."""

    # Gated: the embeddings and the patch features on average. The worst single patch is
    # recorded too: uniform image regions give near-constant tokens whose final LayerNorm
    # amplifies float32 rounding, so it is informative rather than a gate.
    parity_gates = {
        "embedding_cosine_min": (">=", 0.9999),
        "patch_cosine_mean_min": (">=", 0.9999),
        "patch_cosine_min": (">=", 0.99),
    }

    def graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """One graph ``model``; batch and (for any-size inputs) spatial axes dynamic."""
        assert isinstance(pipeline, Dinov3Pipeline)
        height, width = pipeline.preprocessing.output_size(224, 224)
        example = np.random.default_rng(0).standard_normal((2, 3, height, width), np.float32)
        return [
            OnnxGraph(
                name="model",
                inputs={"pixel_values": example},
                outputs=["last_hidden_state", "pooler_output"],
                dynamic_axes={
                    "pixel_values": {0: "batch", 2: "height", 3: "width"},
                    "last_hidden_state": {0: "batch", 1: "tokens"},
                    "pooler_output": {0: "batch"},
                },
            )
        ]

    def parity_options(self) -> list[Any]:
        """CLS embeddings and patch features."""
        return [Dinov3Options(pooling="cls", return_patch_features=True)]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Smallest cosine similarity of embeddings and of patch features."""
        embedding, patch_mean, patch_min = [], [], []
        for ref, cand in zip(reference, candidate, strict=True):
            embedding.append(cosine(ref["embedding"], cand["embedding"]))
            ref_p, cand_p = ref["patch_features"]["data"], cand["patch_features"]["data"]
            cosines = [cosine(a, b) for a, b in zip(ref_p, cand_p, strict=True)]
            patch_mean.append(float(np.mean(cosines)))
            patch_min.append(min(cosines))
        return {
            "embedding_cosine_min": min(embedding),
            "patch_cosine_mean_min": min(patch_mean),
            "patch_cosine_min": min(patch_min),
        }


EXPORT = Dinov3Export()
