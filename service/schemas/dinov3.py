"""``POST /inference/dinov3``: image embeddings and patch features."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engines.families.dinov3.options import Dinov3Options
from service.schemas.common import Endpoint, Images, InferenceResponse, Variant


class Dinov3Request(Dinov3Options, kw_only=True, forbid_unknown_fields=True):
    """Embed each image; optionally return its patch features on their grid."""

    images: Images
    variant: Variant = None


class PatchFeatures(msgspec.Struct, kw_only=True):
    """Patch tokens in row-major order on a ``rows × cols`` grid."""

    grid: list[int]
    dim: int
    data: list[list[float]]


class Dinov3Result(msgspec.Struct, kw_only=True):
    """Features of one image."""

    dim: int
    embedding: list[float] | None
    patch_features: PatchFeatures | None
    visualization: Annotated[
        str | None,
        Meta(
            description="Base64 PNG, twice the image's width: the image, and beside it the first "
            "three principal components of its patch features as RGB. Null unless the "
            "request set visualize."
        ),
    ] = None


class Dinov3Response(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[Dinov3Result]


ENDPOINT = Endpoint(
    model_type="dinov3",
    request=Dinov3Request,
    response=Dinov3Response,
    summary="DINOv3 image embeddings and patch features",
    description="Embed each image; optionally return its patch features on their grid.",
    example={"images": ["https://images.example.com/cat.jpg"], "pooling": "cls", "normalize": True},
    example_summary="CLS embedding, L2-normalised",
)
