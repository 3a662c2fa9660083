"""``POST /inference/sam3``: text-prompted instance segmentation."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from engines.families.sam3.options import Sam3EmbedOptions, Sam3Options
from service.schemas.common import Endpoint, ImageRef, InferenceResponse, Variant


class Sam3ImageRef(ImageRef, kw_only=True, forbid_unknown_fields=True):
    """An image as an object: exactly one of ``data`` (base64), ``url`` and ``image_id``.

    ``image_id`` names an embedding SAM3 keeps (from ``POST /inference/sam3/embed``, or any
    earlier request with the same image): the vision encoder is skipped. Once it is evicted or
    expired the request is a 404; send the image again.
    """

    accepts_image_id: ClassVar[bool] = True


Sam3Images = Annotated[
    list[str | Sam3ImageRef],
    Meta(
        min_length=1,
        description="Base64 image bytes (a data URI prefix is accepted), an http(s) URL, or an "
        "object {data} / {url} / {image_id} (an id from POST /inference/sam3/embed). At most "
        "max_images_per_request (default 16).",
    ),
]


class Sam3Request(Sam3Options, kw_only=True, forbid_unknown_fields=True):
    """Segment every instance of each prompt in each image.

    Each image is encoded once and every prompt runs against that encoding, so extra prompts
    cost only the decoder. Instances of all prompts are merged and sorted by score. An image
    sent before (same pixels, same variant) or named by ``image_id`` is not encoded again while
    its embedding is cached.
    """

    images: Sam3Images
    variant: Variant = None


class Sam3EmbedRequest(Sam3EmbedOptions, kw_only=True, forbid_unknown_fields=True):
    """Encode each image once and keep its embedding; answer an ``image_id`` per image."""

    images: Sam3Images
    variant: Variant = None


class Sam3EmbedResponse(InferenceResponse, kw_only=True):
    """One id per input image, in order, for ``{"image_id": ...}`` items of later requests."""

    image_ids: Annotated[
        list[str],
        Meta(description="SHA-256 of each decoded image's pixels and the variant (hex)."),
    ]
    expires_in_s: Annotated[
        float,
        Meta(
            description="Seconds each embedding is kept after its last use (any request "
            "using it renews it); less-used ones may be evicted sooner when the cache is full."
        ),
    ]


class RleMask(msgspec.Struct, kw_only=True):
    """COCO compressed RLE: ``pycocotools.mask.decode`` gives the mask back."""

    size: list[int]
    counts: str


class Sam3Instance(msgspec.Struct, kw_only=True):
    """One segmented instance, in input-image pixels."""

    prompt: str
    prompt_index: int
    score: float
    box: Annotated[list[float], Meta(description="[x0, y0, x1, y1] in input pixels.")]
    area: Annotated[int, Meta(description="Foreground pixels of the mask.")]
    mask: Annotated[
        list[list[int]] | RleMask | str,
        Meta(
            description="By output_format: dense rows of 0/1 or polygons (lists of ints), "
            "an RLE object, or a base64 PNG string."
        ),
    ]


class Sam3Result(msgspec.Struct, kw_only=True):
    """The instances found in one image, by score, descending."""

    width: int
    height: int
    instances: list[Sam3Instance]
    visualization: Annotated[
        str | None,
        Meta(
            description="Base64 PNG at the image's size: the masks blended over the image, one "
            "colour per instance, labelled with prompt and score. Null unless the request "
            "set visualize."
        ),
    ] = None


class Sam3Response(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[Sam3Result]


ENDPOINT = Endpoint(
    model_type="sam3",
    request=Sam3Request,
    response=Sam3Response,
    summary="SAM3 text-prompted instance segmentation",
    description="Segment every instance of each prompt; each image is encoded once for all "
    "prompts.",
    example={
        "images": ["https://images.example.com/cat.jpg"],
        "prompts": ["cat", "ear"],
        "threshold": 0.5,
        "mask_threshold": 0.5,
        "output_format": "rle",
    },
    example_summary="Two prompts, COCO RLE masks",
)
