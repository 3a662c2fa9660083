"""The options of a SAM3 request: the prompts, the score and mask thresholds, the mask format."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engines.masks import MaskFormat
from engines.options import PromptText, Score

Prompt = Annotated[
    PromptText,
    Meta(
        description="A short noun phrase (at most 32 tokens, start and end tokens included).",
    ),
]


class Sam3Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
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
        MaskFormat,
        Meta(
            description="dense: height rows of width 0/1 values; rle: COCO compressed RLE "
            "({size, counts}, as pycocotools.mask.encode gives it); polygon: outer contours as "
            "[[x0, y0, x1, y1, ...], ...]; png: base64 of a single-channel PNG (0/255)."
        ),
    ] = "dense"
    visualize: Annotated[
        bool,
        Meta(
            description=(
                "Also return each result's visualization: a base64 PNG of the image with every "
                "mask blended over it, one colour per instance, labelled with its prompt and "
                "score. Needs the image itself (not an image_id)."
            )
        ),
    ] = False


class Sam3EmbedOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Encode each image once and keep its embedding for later requests by ``image_id``.

    No fields: an embedding depends only on the image and the variant. Passed as the options of
    a pool run, it makes :class:`~engines.families.sam3.pipeline.Sam3Pipeline` return each
    image's id instead of segmenting it.
    """
