"""Schemas shared by every inference endpoint, and the declaration of an endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
from msgspec import Meta


class ImageRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An image as an object: exactly one of ``data`` (base64) and ``url``.

    ``image_id`` is part of every endpoint's item so that one sent elsewhere is refused with a
    message saying where it belongs; an endpoint whose family keeps image embeddings (SAM3)
    declares a subclass with ``accepts_image_id = True``.
    """

    data: Annotated[
        str | None, Meta(description="Base64 image bytes (a data URI prefix is accepted).")
    ] = None
    url: Annotated[
        str | None, Meta(description="An http(s) URL the server fetches the image from.")
    ] = None
    image_id: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=128,
                description="sam3 only: the id POST /inference/sam3/embed returned for an "
                "image (in place of data or url).",
            ),
        ]
        | None
    ) = None
    accepts_image_id: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Refuse ``image_id`` where the endpoint's family keeps no embeddings (a 400)."""
        if self.image_id is not None and not self.accepts_image_id:
            raise ValueError(
                "image_id items are accepted only by sam3 (POST /inference/sam3 and sam3 "
                "jobs); send this model the image as data or url"
            )


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


class InferenceRequest(Protocol):
    """What every inference request has: its family's options plus these two fields.

    A request Struct extends its family's options type (``engines/families/<name>/options.py``)
    with ``images: Images`` and ``variant: Variant = None``, so the pipeline reads the request
    as its options and the schema validates every field once, at the edge.
    """

    variant: str | None

    @property
    def images(self) -> Sequence[ImageInput]:
        """The image items (a read-only view: SAM3's items are a subclass of ``ImageRef``)."""
        ...


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


@dataclass(frozen=True)
class Endpoint:
    """``POST /inference/<model_type>`` of one family, as its schema module declares it.

    Each ``service/schemas/<family>.py`` defines one as ``ENDPOINT`` (and its tasks' as
    ``TASK_ENDPOINTS``); the routes, the job submission and the start-up check against the
    family registry are built from it.

    Attributes:
        model_type: The family's canonical name (the path segment).
        request: The request Struct: the family's options type plus ``images`` and ``variant``.
        response: The response Struct.
        summary: The OpenAPI summary.
        description: The OpenAPI description.
        example: A request body shown in the docs (it validates against ``request``).
        example_summary: The example's title.
        task: A whole-request task of the family (``Family.tasks``, e.g. Depth Anything's
            ``scene``) instead of its per-image inference; its request extends the task's
            options type, and its response carries the one result's fields at the top level.
    """

    model_type: str
    request: type[Any]
    response: type[InferenceResponse]
    summary: str
    description: str
    example: dict[str, Any] = field(default_factory=dict)
    example_summary: str = "Example"
    task: str | None = None

    @property
    def name(self) -> str:
        """The endpoint's name in job submissions: ``<model_type>`` or ``<model_type>-<task>``."""
        return self.model_type if self.task is None else f"{self.model_type}-{self.task}"

    @property
    def path(self) -> str:
        """Its path under ``/inference``: ``/<model_type>`` or ``/<model_type>/<task>``."""
        return f"/{self.model_type}" if self.task is None else f"/{self.model_type}/{self.task}"
