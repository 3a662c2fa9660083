"""``POST /inference/sam3``: text-prompted instance segmentation."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from service.schemas.common import InferenceRequest, InferenceResponse

Prompt = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=1000,
        pattern=r"\S",
        description="A short noun phrase (at most 32 tokens, start and end tokens included).",
    ),
]
Score = Annotated[float, Meta(ge=0.0, le=1.0)]


class Sam3Request(InferenceRequest, kw_only=True, forbid_unknown_fields=True):
    """Segment every instance of each prompt in each image.

    Each image is encoded once and every prompt runs against that encoding, so extra prompts
    cost only the decoder. Instances of all prompts are merged and sorted by score.
    """

    prompts: Annotated[
        list[Prompt],
        Meta(min_length=1, max_length=32, description="1 to 32 noun phrases, e.g. ['cat']."),
    ]
    threshold: Annotated[
        Score,
        Meta(
            description="Keep instances whose score (sigmoid(logit) x sigmoid(presence)) "
            "is above this."
        ),
    ] = 0.5
    mask_threshold: Annotated[
        Score, Meta(description="Mask pixels whose probability is above this are foreground.")
    ] = 0.5
    output_format: Annotated[
        Literal["dense", "rle", "polygon", "png"],
        Meta(
            description="dense: height rows of width 0/1 values; rle: COCO compressed RLE "
            "({size, counts}, as pycocotools.mask.encode gives it); polygon: outer contours as "
            "[[x0, y0, x1, y1, ...], ...]; png: base64 of a single-channel PNG (0/255)."
        ),
    ] = "dense"


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
