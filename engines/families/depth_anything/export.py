"""Exporting Depth Anything to ONNX: one graph, and how its parity with torch is measured.

Parity is measured on the graph's raw depth: the sky rule of DA3 mono / metric is discontinuous
(a sky score within rounding of the 0.3 threshold flips a pixel between its depth and the fill
value), so :class:`ParityOptions` turns it off for both runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.families.depth_anything.compare import depth_metrics
from engines.families.depth_anything.options import DepthAnythingOptions
from engines.families.depth_anything.pipeline import DA3_PROCESS_RES, DepthAnythingPipeline


class ParityOptions(DepthAnythingOptions, kw_only=True, forbid_unknown_fields=True):
    """The request options plus a switch only export parity uses (never a request field).

    Attributes:
        sky_rule: Apply the DA3 sky rule in post-processing (the pipeline's default is to).
    """

    sky_rule: bool = False


class DepthAnythingExport(FamilyExport):
    """One graph ``model`` (``pixel_values`` → ``depth`` and the network's other outputs)."""

    # Relative L2 error of each depth map (after post-processing), worst image; intrinsics and
    # the mean confidence where the network predicts them.
    parity_gates = {
        "depth_rel_l2_max": ("<=", 1e-4),
        "intrinsics_rel_max": ("<=", 1e-4),
        "confidence_mean_rel_max": ("<=", 1e-4),
    }

    def graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """One graph ``model``; batch, height and width dynamic."""
        assert isinstance(pipeline, DepthAnythingPipeline)
        if pipeline.v2_preprocessing is not None:
            width, height = pipeline.v2_preprocessing.output_size(640, 480)
        else:
            from engines.families.depth_anything.da3 import da3_input_size

            width, height = da3_input_size(640, 480, DA3_PROCESS_RES)
        example = np.random.default_rng(0).standard_normal((2, 3, height, width), np.float32)
        image_axes = {0: "batch", 1: "height", 2: "width"}
        axes: dict[str, dict[int, str]] = {
            "pixel_values": {0: "batch", 2: "height", 3: "width"},
            "depth": image_axes,
        }
        if pipeline.network.has_camera:
            axes |= {"confidence": image_axes, "intrinsics": {0: "batch"}}
        if pipeline.network.has_sky:
            axes["sky"] = image_axes
        return [
            OnnxGraph(
                name="model",
                inputs={"pixel_values": example},
                outputs=pipeline.network.outputs,
                dynamic_axes=axes,
            )
        ]

    def parity_options(self) -> list[Any]:
        """Depth maps as arrays (metric variants with their default focal), no sky rule."""
        return [ParityOptions()]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Worst relative L2 error of the depth maps, of intrinsics and of mean confidence."""
        return depth_metrics(reference, candidate)


EXPORT = DepthAnythingExport()
