"""What a DINOv3 request asks for (the HTTP schema extends it with images and variant)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class Dinov3Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Embeddings request.

    ``pooling``: ``cls`` is the normed CLS token (``pooler_output``; for ConvNeXt variants,
    which have no CLS token, their layer-normed global average pool), ``mean`` the mean of the
    patch tokens (ConvNeXt: of the final feature map), ``none`` no embedding.
    """

    pooling: Annotated[
        Literal["cls", "mean", "none"],
        Meta(
            description="cls: the normed CLS token (ConvNeXt: its layer-normed global average "
            "pool); mean: the mean of the patch tokens; none: no embedding."
        ),
    ] = "cls"
    normalize: Annotated[bool, Meta(description="L2-normalise the embedding.")] = True
    return_patch_features: Annotated[
        bool,
        Meta(
            description="Also return the patch tokens on their grid (ConvNeXt: the last "
            "feature map, stride 32)."
        ),
    ] = False
    visualize: Annotated[
        bool,
        Meta(
            description=(
                "Also return each result's visualization: a base64 PNG of the image and, beside "
                "it, the first three principal components of its patch features as RGB, upsampled "
                "to the image's size."
            )
        ),
    ] = False
