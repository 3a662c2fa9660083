"""``POST /inference/dinov3``: image embeddings and patch features."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from service.schemas.common import InferenceRequest, InferenceResponse


class Dinov3Request(InferenceRequest, kw_only=True, forbid_unknown_fields=True):
    """Embeddings request.

    ``pooling``: ``cls`` is the normed CLS token (``pooler_output``; for ConvNeXt variants,
    which have no CLS token, their layer-normed global average pool), ``mean`` the mean of the
    patch tokens (ConvNeXt: of the final feature map), ``none`` no embedding.
    """

    pooling: Literal["cls", "mean", "none"] = "cls"
    normalize: Annotated[bool, Meta(description="L2-normalise the embedding.")] = True
    return_patch_features: Annotated[
        bool,
        Meta(description="Also return the patch tokens on their grid (ConvNeXt: the last "
             "feature map, stride 32)."),
    ] = False


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


class Dinov3Response(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[Dinov3Result]
