"""Exporting Depth Anything to ONNX: one graph, and how its parity with torch is measured.

Parity is measured on the graph's raw depth: the sky rule of DA3 mono / metric is discontinuous
(a sky score within rounding of the 0.3 threshold flips a pixel between its depth and the fill
value), so :class:`ParityOptions` turns it off for both runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from engines.base import FamilyExport, OnnxGraph, Pipeline
from engines.families.depth_anything.compare import depth_metrics, rel_l2
from engines.families.depth_anything.family import SCENE_OUTPUTS
from engines.families.depth_anything.options import (
    REF_VIEW_STRATEGIES,
    DepthAnythingOptions,
    DepthSceneOptions,
)
from engines.families.depth_anything.pipeline import (
    DA3_PROCESS_RES,
    DepthAnythingPipeline,
    default_focal_px,
)


class ParityOptions(DepthAnythingOptions, kw_only=True, forbid_unknown_fields=True):
    """The request options plus a switch only export parity uses (never a request field).

    Attributes:
        sky_rule: Apply the DA3 sky rule in post-processing (the pipeline's default is to).
    """

    sky_rule: bool = False


class DepthAnythingExport(FamilyExport):
    """Graph ``model`` (``pixel_values`` → ``depth`` and the network's other outputs).

    Any-view DA3 also has ``scene``: several views of one scene in one forward.
    """

    # Relative L2 error of each depth map (after post-processing), worst image; intrinsics and
    # the mean confidence where the network predicts them.
    parity_gates = {
        "depth_rel_l2_max": ("<=", 1e-4),
        "intrinsics_rel_max": ("<=", 1e-4),
        "confidence_mean_rel_max": ("<=", 1e-4),
        "scene_depth_rel_l2_max": ("<=", 1e-4),
        "scene_confidence_rel_l2_max": ("<=", 1e-4),
        "scene_intrinsics_rel_max": ("<=", 1e-4),
        "scene_extrinsics_rel_max": ("<=", 1e-4),
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
        graphs = [
            OnnxGraph(
                name="model",
                inputs={"pixel_values": example},
                outputs=pipeline.network.outputs,
                dynamic_axes=axes,
            )
        ]
        if pipeline.network.has_camera:
            graphs.append(scene_graph(height, width))
        return graphs

    def parity_options(self) -> list[Any]:
        """Depth maps as arrays (metric variants with their default focal), no sky rule."""
        return [ParityOptions()]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Worst relative L2 error of the depth maps, of intrinsics and of mean confidence."""
        return depth_metrics(reference, candidate)

    def task_parity_options(self, images: Sequence[Image.Image]) -> list[tuple[str, Any]]:
        """Scenes of all parity photos, with predicted and with given cameras.

        Predicted: the default reference-view strategy; given: the camera encoder's path.
        """
        return [("scene", DepthSceneOptions()), ("scene", _posed_options(images))]

    def task_parity_metrics(
        self, task: str, reference: dict[str, Any], candidate: dict[str, Any]
    ) -> dict[str, float]:
        """Worst relative L2 error of the views' depth, confidence, intrinsics and extrinsics."""
        return scene_metrics(reference, candidate)


def scene_graph(height: int, width: int) -> OnnxGraph:
    """The any-view ``scene`` graph: views, optional cameras and the reference strategy in.

    The view count, height and width are dynamic; ``has_cameras`` (bool) and
    ``ref_strategy`` (int64 index into ``REF_VIEW_STRATEGIES``) are scalars, so one graph
    serves every request (cameras or not, any strategy).
    """
    views = 3  # at least 3, so that the reference-view selection is traced as it runs
    rng = np.random.default_rng(0)
    per_view = {0: "views"}
    image_axes = {0: "views", 1: "height", 2: "width"}
    return OnnxGraph(
        name="scene",
        inputs={
            "pixel_values": rng.standard_normal((views, 3, height, width), np.float32),
            "given_extrinsics": np.tile(np.eye(4, dtype=np.float32), (views, 1, 1)),
            "given_intrinsics": np.tile(np.eye(3, dtype=np.float32), (views, 1, 1)),
            "has_cameras": np.array(False),
            "ref_strategy": np.array(REF_VIEW_STRATEGIES.index("saddle_balanced"), np.int64),
        },
        outputs=list(SCENE_OUTPUTS),
        dynamic_axes={
            "pixel_values": {0: "views", 2: "height", 3: "width"},
            "given_extrinsics": per_view,
            "given_intrinsics": per_view,
            "depth": image_axes,
            "confidence": image_axes,
            "intrinsics": per_view,
            "extrinsics": per_view,
        },
    )


def _posed_options(images: Sequence[Image.Image]) -> DepthSceneOptions:
    """Given cameras for the parity photos: a sideways track, 60° horizontal FoV."""
    extrinsics, intrinsics = [], []
    for index, (width, height) in enumerate(image.size for image in images):
        pose = np.eye(4)
        pose[:3, 3] = (0.3 * index, 0.0, 0.05 * index)
        extrinsics.append(pose.tolist())
        focal = default_focal_px(width)
        intrinsics.append([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return DepthSceneOptions(extrinsics=extrinsics, intrinsics=intrinsics)


def scene_metrics(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, float]:
    """Worst relative L2 error, over views, of depth, confidence, intrinsics and extrinsics."""
    worst = dict.fromkeys(
        (
            "scene_depth_rel_l2_max",
            "scene_confidence_rel_l2_max",
            "scene_intrinsics_rel_max",
            "scene_extrinsics_rel_max",
        ),
        0.0,
    )
    for ref, cand in zip(reference["views"], candidate["views"], strict=True):
        for key, metric in (
            ("depth", "scene_depth_rel_l2_max"),
            ("confidence", "scene_confidence_rel_l2_max"),
            ("intrinsics", "scene_intrinsics_rel_max"),
            ("extrinsics", "scene_extrinsics_rel_max"),
        ):
            worst[metric] = max(worst[metric], rel_l2(ref[key], cand[key]))
    return worst


EXPORT = DepthAnythingExport()
