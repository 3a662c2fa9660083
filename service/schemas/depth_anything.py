"""``POST /inference/depth-anything`` (depth per image) and ``.../scene`` (several views)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from engines.families.depth_anything.options import DepthAnythingOptions, DepthSceneOptions
from service.schemas.common import Endpoint, ImageInput, Images, InferenceResponse, Variant


class DepthAnythingRequest(DepthAnythingOptions, kw_only=True, forbid_unknown_fields=True):
    """A depth map per image (the options' description says which variant gives what)."""

    images: Images
    variant: Variant = None


class ConfidenceStats(msgspec.Struct, kw_only=True):
    """Statistics of the depth confidence map (DA3 any-view).

    Over the network's output pixels. The confidence is exp(x) + 1 >= 1; higher is more
    confident.
    """

    mean: float
    min: float
    max: float


class DepthAnythingResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The depth map of one image, at the input image's size.

    Example (``metric-large``, ``output_format`` png)::

        {"width": 640, "height": 480, "kind": "metric", "units": "m", "relation": "depth",
         "min": 0.84, "max": 41.2, "depth": "iVBORw0KGgo...", "focal_px": 554.3,
         "focal_source": "default_fov", "sky_fraction": 0.18}

    Example (``small``, ``output_format`` array)::

        {"width": 3, "height": 2, "kind": "relative", "units": null, "relation": "depth",
         "min": 0.51, "max": 0.93, "depth": [[0.51, 0.6, 0.72], [0.55, 0.81, 0.93]],
         "confidence": {"mean": 7.9, "min": 1.02, "max": 31.5},
         "intrinsics": [[520.1, 0.0, 1.5], [0.0, 518.7, 1.0], [0.0, 0.0, 1.0]]}

    Fields absent for a variant are left out.
    """

    width: int
    height: int
    kind: Annotated[
        Literal["relative", "metric"],
        Meta(
            description="metric: absolute distances in units; relative: correct up to an "
            "unknown scale (and, for inverse relations, shift)."
        ),
    ]
    units: Annotated[Literal["m"] | None, Meta(description="m for metric maps, else null.")]
    relation: Annotated[
        Literal["depth", "inverse"],
        Meta(
            description="depth: larger is farther (DA3); inverse: the map is relative "
            "inverse depth, i.e. disparity, larger is nearer (V2)."
        ),
    ]
    min: Annotated[float, Meta(description="Smallest value of the map.")]
    max: Annotated[float, Meta(description="Largest value of the map.")]
    depth: Annotated[
        list[list[float]] | str,
        Meta(
            description="array: height rows of width floats; png: base64 16-bit grayscale "
            "PNG, value v maps back to min + v / 65535 * (max - min)."
        ),
    ]
    confidence: ConfidenceStats | None = None
    intrinsics: Annotated[
        list[list[float]] | None,
        Meta(
            description="DA3 any-view: predicted 3x3 camera matrix [[fx, 0, cx], [0, fy, cy], "
            "[0, 0, 1]] in input-image pixels."
        ),
    ] = None
    focal_px: Annotated[
        float | None,
        Meta(description="Metric DA3: the focal length used, in input-image pixels."),
    ] = None
    focal_source: Annotated[
        Literal["request", "default_fov"] | None,
        Meta(
            description="Metric DA3: focal_px came from the request, or from the default "
            "60° horizontal field of view."
        ),
    ] = None
    sky_fraction: Annotated[
        float | None,
        Meta(
            description="DA3 mono / metric: share of the network's output pixels classified "
            "as sky (score >= 0.3); they hold the 99th-percentile depth of the rest."
        ),
    ] = None
    visualization: Annotated[
        str | None,
        Meta(
            description="Base64 PNG, twice the image's width: the image, and beside it the "
            "depth map in the turbo colour map (near red, far blue). Absent unless the request "
            "set visualize."
        ),
    ] = None


class DepthAnythingResponse(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[DepthAnythingResult]


ENDPOINT = Endpoint(
    model_type="depth-anything",
    request=DepthAnythingRequest,
    response=DepthAnythingResponse,
    summary="Depth Anything depth estimation",
    description="Predict a depth map per image, at the image's size (metres for metric variants).",
    example={
        "images": ["https://images.example.com/cat.jpg"],
        "variant": "metric-large",
        "output_format": "png",
        "focal_px": 1000.0,
    },
    example_summary="Metric depth as a 16-bit PNG",
)


class DepthSceneRequest(DepthSceneOptions, kw_only=True, forbid_unknown_fields=True):
    """Views of one scene (the options' description says what comes back)."""

    images: Annotated[
        list[ImageInput],
        Meta(
            min_length=2,
            description="The views: base64 image bytes, http(s) URLs or {data} / {url} "
            "objects, 2 to max_scene_views (default 16).",
        ),
    ]
    variant: Variant = None

    def __post_init__(self) -> None:
        """The options' checks, and one camera per view when cameras are given."""
        super().__post_init__()
        for name in ("extrinsics", "intrinsics"):
            matrices = getattr(self, name)
            if matrices is not None and len(matrices) != len(self.images):
                raise ValueError(
                    f"{name} has {len(matrices)} matrices for {len(self.images)} images; give "
                    "one per view, in the order of images"
                )


class SceneView(msgspec.Struct, kw_only=True):
    """One view's depth, confidence and camera, in the view's input pixels."""

    width: int
    height: int
    min: Annotated[float, Meta(description="Smallest depth of the view.")]
    max: Annotated[float, Meta(description="Largest depth of the view.")]
    depth: Annotated[
        list[list[float]] | str,
        Meta(
            description="Depth along the camera's z axis, one shared scale for all views "
            "(relative, or the given cameras' scale). array: height rows of width floats; "
            "png: base64 16-bit PNG, v maps back to min + v / 65535 * (max - min). 0 where "
            "the network saw no pixel (cropped away to bring views to one size)."
        ),
    ]
    confidence_min: float
    confidence_max: float
    confidence: Annotated[
        list[list[float]] | str,
        Meta(
            description="Depth confidence (>= 1, higher is surer; 0 where the network saw no "
            "pixel), encoded as depth is, between confidence_min and confidence_max."
        ),
    ]
    extrinsics: Annotated[
        list[list[float]],
        Meta(
            description="3x4 world-to-camera [R | t] (OpenCV axes), one world frame for all "
            "views: x_cam = R x_world + t."
        ),
    ]
    intrinsics: Annotated[
        list[list[float]],
        Meta(description="3x3 [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in the view's pixels."),
    ]


class ScenePointCloud(msgspec.Struct, kw_only=True):
    """The views' depth unprojected into the shared world frame, coloured from the images."""

    format: Literal["ply", "glb"]
    points: Annotated[int, Meta(description="Number of points in the file.")]
    data: Annotated[str, Meta(description="Base64 of the file.")]
    transform: Annotated[
        list[list[float]],
        Meta(
            description="4x4 from world coordinates (the extrinsics' frame) to the file's: the "
            "identity for PLY; for GLB the official export's glTF alignment (first camera, "
            "y up, centred on the points)."
        ),
    ]


class DepthSceneResponse(InferenceResponse, kw_only=True):
    """One entry per view, in the order of the request's images."""

    views: list[SceneView]
    point_cloud: ScenePointCloud | None = None
    visualization: Annotated[
        str | None,
        Meta(description="Base64 PNG, one row per view: the image and its depth in turbo."),
    ] = None


SCENE_ENDPOINT = Endpoint(
    model_type="depth-anything",
    task="scene",
    request=DepthSceneRequest,
    response=DepthSceneResponse,
    summary="Depth Anything 3 scene: depth, cameras and a point cloud from several views",
    description="Predict, in one forward over all views, every view's depth in one shared "
    "scale and every camera (world-to-camera extrinsics, intrinsics) in one world frame, and "
    "optionally the point cloud they make. Any-view variants only (small, base, large, giant).",
    example={
        "images": [
            "https://images.example.com/room-1.jpg",
            "https://images.example.com/room-2.jpg",
            "https://images.example.com/room-3.jpg",
        ],
        "variant": "small",
        "output_format": "png",
        "point_cloud": "ply",
    },
    example_summary="Three photos in, a PLY point cloud out",
)
TASK_ENDPOINTS = (SCENE_ENDPOINT,)
