"""Schemas shared by every inference endpoint."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class ImageRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An image as an object: exactly one of ``data`` (base64) and ``url``."""

    data: str | None = None
    url: str | None = None


ImageInput = str | ImageRef
Images = Annotated[
    list[ImageInput],
    Meta(
        min_length=1,
        description="Base64 image bytes (a data URI prefix is accepted), an http(s) URL, or an "
        "object {data} / {url}. At most max_images_per_request (default 16).",
    ),
]
Variant = Annotated[
    str | None, Meta(description="Checkpoint variant; the model's default when omitted.")
]


class InferenceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields every inference request has."""

    images: Images
    variant: Variant = None


class Timings(msgspec.Struct, kw_only=True):
    """Milliseconds spent in each stage of the request."""

    decode: float
    preprocess: float
    inference: float
    postprocess: float
    total: float


class InferenceResponse(msgspec.Struct, kw_only=True):
    """Fields every inference response has."""

    model_type: str
    variant: str
    engine: str
    device: str
    timings_ms: Timings
