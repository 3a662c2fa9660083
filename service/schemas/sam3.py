"""``POST /inference/sam3``: text-prompted instance segmentation."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engines.families.sam3.options import Sam3Options
from service.schemas.common import Endpoint, Images, InferenceResponse, Variant


class Sam3Request(Sam3Options, kw_only=True, forbid_unknown_fields=True):
    """Segment every instance of each prompt in each image.

    Each image is encoded once and every prompt runs against that encoding, so extra prompts
    cost only the decoder. Instances of all prompts are merged and sorted by score.
    """

    images: Images
    variant: Variant = None


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
