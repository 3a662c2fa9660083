"""The request fields GroundingDINO reads, validated once by this schema."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engines.options import PromptText, Score

Prompt = Annotated[
    PromptText,
    Meta(
        description="A label, e.g. 'a cat'. Labels are lowercased and joined as 'a cat. a dog.'; "
        "all of them together may take at most 256 tokens (one more per label for the '.').",
    ),
]


class GroundingDinoOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Detect the objects each prompt names in each image.

    The prompts are read together as one text; a box is kept when its best token probability is
    above ``box_threshold``, and named after the prompt owning its most probable token among
    those above ``text_threshold`` (boxes matching only the separators are dropped).
    """

    prompts: Annotated[
        list[Prompt],
        Meta(min_length=1, max_length=64, description="1 to 64 labels, e.g. ['cat', 'a dog']."),
    ]
    box_threshold: Annotated[
        Score, Meta(description="Keep boxes whose best text-token probability is above this.")
    ] = 0.35
    text_threshold: Annotated[
        Score, Meta(description="Tokens whose probability is above this may name the box.")
    ] = 0.25
    visualize: Annotated[
        bool,
        Meta(
            description=(
                "Also return each result's visualization: a base64 PNG of the image with every "
                "box drawn over it, labelled with its prompt and score."
            )
        ),
    ] = False
