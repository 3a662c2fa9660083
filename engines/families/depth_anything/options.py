"""What a Depth Anything request asks for (the HTTP schema extends it with images and variant)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class DepthAnythingOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Estimate a depth map for each image.

    Variants: Depth Anything 3 ``small`` (default), ``base``, ``large``, ``giant`` (any-view
    models: relative depth, confidence, camera intrinsics), ``mono-large`` (relative depth),
    ``metric-large`` (metres), and Depth Anything V2 ``v2-small``, ``v2-base``, ``v2-large``
    (relative inverse depth). ``large``, ``giant``, ``v2-base`` and ``v2-large`` are
    CC BY-NC 4.0 (non-commercial); the others Apache-2.0. ``GET /models/status`` lists them.

    Example: ``{"images": ["<base64>"], "variant": "metric-large", "output_format": "png",
    "focal_px": 1450.0}``
    """

    output_format: Annotated[
        Literal["array", "png"],
        Meta(
            description="array: the depth map as height rows of width floats; png: base64 of a "
            "16-bit grayscale PNG holding round((d - min) / (max - min) * 65535)."
        ),
    ] = "array"
    focal_px: (
        Annotated[
            float,
            Meta(
                gt=0,
                description="Focal length of the camera in pixels of the input image (after "
                "EXIF rotation). Metric variants use it to turn the network output into "
                "metres; without it a 60° horizontal field of view is assumed. Relative "
                "variants ignore it.",
            ),
        ]
        | None
    ) = None
    visualize: Annotated[
        bool,
        Meta(
            description=(
                "Also return each result's visualization: a base64 PNG of the image and, beside "
                "it, the depth map in the turbo colour map (near red, far blue), twice the "
                "image's width."
            )
        ),
    ] = False


REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")
Matrix = list[list[float]]


class DepthSceneOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Several views of one scene in one forward: consistent depth, cameras, a point cloud.

    Any-view Depth Anything 3 variants only (``small``, ``base``, ``large``, ``giant``). The
    views attend to each other, so every view's depth is in one shared scale and every camera
    in one world frame. Views of different sizes are resized as for single images (longest side
    to ``process_res``, sides to multiples of 14) and then centre-cropped to the smallest
    network height and width, as the official package does; pixels cropped away are 0 in depth
    and confidence. Every output is in each view's own input pixels.
    """

    extrinsics: Annotated[
        list[Matrix] | None,
        Meta(
            description="Known cameras: one 4x4 world-to-camera matrix per view (OpenCV "
            "axes: x right, y down, z forward). With intrinsics, the network is conditioned on "
            "them (pose-conditioned inference), and the result is returned in their world "
            "frame and scale."
        ),
    ] = None
    intrinsics: Annotated[
        list[Matrix] | None,
        Meta(
            description="Known intrinsics: one 3x3 [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] per "
            "view, in that view's input pixels; given together with extrinsics."
        ),
    ] = None
    ref_view_strategy: Annotated[
        Literal["first", "middle", "saddle_balanced", "saddle_sim_range"],
        Meta(
            description="How the reference view (the world frame's origin) is chosen among 3 "
            "or more views without known cameras, as the official package names them: the "
            "first, the middle one, the most typical by its features (saddle_balanced), or the "
            "one with the widest similarity range to the others (saddle_sim_range)."
        ),
    ] = "saddle_balanced"
    process_res: Annotated[
        int,
        Meta(
            ge=112,
            le=1512,
            description="The longest side of each view in the network, before rounding to "
            "multiples of 14 (the official default 504).",
        ),
    ] = 504
    output_format: Annotated[
        Literal["array", "png"],
        Meta(
            description="array: depth and confidence as height rows of width floats; png: "
            "base64 16-bit grayscale PNGs, v maps back to min + v / 65535 * (max - min)."
        ),
    ] = "array"
    point_cloud: Annotated[
        Literal["none", "ply", "glb"],
        Meta(
            description="none, a binary PLY (x y z float, red green blue uchar, in the world "
            "frame of the returned extrinsics) or a GLB scene (the points and each camera as "
            "a frustum, in glTF axes; point_cloud.transform maps world to file coordinates)."
        ),
    ] = "none"
    conf_percentile: Annotated[
        float,
        Meta(
            ge=0,
            le=100,
            description="Points whose confidence is below this percentile of all views' "
            "confidences are left out (as the official export, never above the 90th).",
        ),
    ] = 40.0
    max_points: Annotated[
        int,
        Meta(ge=1, le=10_000_000, description="Most points; more are sampled down at random."),
    ] = 1_000_000
    visualize: Annotated[
        bool,
        Meta(
            description="Also return a base64 PNG strip: one row per view, the image beside "
            "its depth map in the turbo colour map (near red, far blue)."
        ),
    ] = False

    def __post_init__(self) -> None:
        """Both cameras or neither; each matrix of the right shape (400 otherwise)."""
        if (self.extrinsics is None) != (self.intrinsics is None):
            raise ValueError("extrinsics and intrinsics are given together, or neither")
        for name, rows in (("extrinsics", 4), ("intrinsics", 3)):
            matrices = getattr(self, name) or []
            for index, matrix in enumerate(matrices):
                if len(matrix) != rows or any(len(row) != rows for row in matrix):
                    raise ValueError(f"{name}[{index}] must be a {rows}x{rows} matrix")
                if not all(math.isfinite(v) for row in matrix for v in row):
                    raise ValueError(f"{name}[{index}] holds a value that is not finite")
        for index, matrix in enumerate(self.extrinsics or []):
            if not _is_rigid(matrix):
                raise ValueError(
                    f"extrinsics[{index}] is not a rigid transform: [R | t] with R a rotation "
                    "(orthonormal, determinant 1) and a last row 0 0 0 1"
                )
        for index, matrix in enumerate(self.intrinsics or []):
            if not (matrix[0][0] > 0 and matrix[1][1] > 0):
                raise ValueError(f"intrinsics[{index}] needs positive focal lengths fx and fy")


def _is_rigid(matrix: Matrix, tolerance: float = 1e-3) -> bool:
    """Whether a 4x4 matrix is [R | t; 0 0 0 1] with R a rotation (within ``tolerance``)."""
    if any(abs(v - w) > tolerance for v, w in zip(matrix[3], (0, 0, 0, 1), strict=True)):
        return False
    rotation = [row[:3] for row in matrix[:3]]
    for row in range(3):
        for col in range(3):
            dot = sum(rotation[k][row] * rotation[k][col] for k in range(3))
            if abs(dot - (row == col)) > tolerance:
                return False
    (a, b, c), (d, e, f), (g, h, m) = rotation
    return a * (e * m - f * h) - b * (d * m - f * g) + c * (d * h - e * g) > 0
