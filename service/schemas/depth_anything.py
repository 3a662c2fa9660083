"""``POST /inference/depth-anything``: monocular depth estimation."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from engines.families.depth_anything.options import DepthAnythingOptions
from service.schemas.common import Endpoint, Images, InferenceResponse, Variant


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
