"""``POST /inference/grounding-dino``: open-vocabulary detection."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engines.families.grounding_dino.options import GroundingDinoOptions
from service.schemas.common import Endpoint, Images, InferenceResponse, Variant


class GroundingDinoRequest(GroundingDinoOptions, kw_only=True, forbid_unknown_fields=True):
    """Detect the objects each prompt names in each image.

    The prompts are read together as one text; a box is kept when its best token probability is
    above ``box_threshold``, and named after the prompt owning its most probable token among
    those above ``text_threshold`` (boxes matching only the separators are dropped).
    """

    images: Images
    variant: Variant = None


class GroundingDinoDetection(msgspec.Struct, kw_only=True):
    """One detected object, in input-image pixels."""

    label: Annotated[str, Meta(description="The matched prompt, exactly as sent.")]
    prompt_index: Annotated[int, Meta(description="Index of that prompt in the request.")]
    score: float
    box: Annotated[list[float], Meta(description="[x0, y0, x1, y1] in input pixels.")]


class GroundingDinoResult(msgspec.Struct, kw_only=True):
    """The detections in one image, by score, descending."""

    width: int
    height: int
    detections: list[GroundingDinoDetection]
    visualization: Annotated[
        str | None,
        Meta(
            description="Base64 PNG at the image's size: the boxes drawn over the image, labelled "
            "with prompt and score. Null unless the request set visualize."
        ),
    ] = None


class GroundingDinoResponse(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[GroundingDinoResult]


ENDPOINT = Endpoint(
    model_type="grounding-dino",
    request=GroundingDinoRequest,
    response=GroundingDinoResponse,
    summary="GroundingDINO open-vocabulary detection",
    description="Detect the objects the prompts name; each detection carries its whole prompt.",
    example={
        "images": ["https://images.example.com/cat.jpg"],
        "prompts": ["a cat", "a remote control"],
        "box_threshold": 0.35,
        "text_threshold": 0.25,
    },
    example_summary="Two labels",
)
