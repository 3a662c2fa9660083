"""What a Depth Anything request asks for (the HTTP schema extends it with images and variant)."""

from __future__ import annotations

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
