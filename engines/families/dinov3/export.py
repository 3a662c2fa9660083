"""Exporting DINOv3 to ONNX: one graph, and how its parity with torch is measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.families.dinov3.compare import embedding_metrics
from engines.families.dinov3.options import Dinov3Options
from engines.families.dinov3.pipeline import Dinov3Pipeline


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
        return embedding_metrics(reference, candidate)


EXPORT = Dinov3Export()
