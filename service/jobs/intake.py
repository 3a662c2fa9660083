"""Validating a job submission exactly as the synchronous endpoint would, before queueing.

The body's schema depends on the path's model type, so the route reads raw bytes and this
module decodes them; validation errors are raised as Litestar's own exceptions, shaped as
Litestar shapes them for the synchronous endpoints, so both answer the same 400.
"""

from __future__ import annotations

import re

import msgspec
from litestar.exceptions import ClientException, ValidationException

from engines.errors import NotFoundError
from service.images import DecodedImage
from service.inference import SCHEMAS, InferenceService
from service.schemas.common import InferenceRequest

_LOCATION = re.compile(r"`\$\.(.+)`$")


def parse_body(model_type: str, body: bytes) -> InferenceRequest:
    """Decode ``body`` into the request schema of a canonical ``model_type``.

    Raises:
        ClientException: The body is not JSON (400).
        ValidationException: The body does not match the schema (400, with ``errors``).
    """
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        if not body.strip():
            raise ClientException(
                f"The body is empty; send the same JSON body as POST /inference/{model_type}."
            ) from None
        raise ClientException(str(exc)) from None
    try:
        return msgspec.convert(raw, SCHEMAS[model_type][0], strict=False)
    except msgspec.ValidationError as exc:
        message, _, _ = str(exc).partition(" - ")
        located = _LOCATION.search(str(exc))
        error = {"message": message, "key": located.group(1) if located else "data",
                 "source": "body"}
        raise ValidationException(detail="Validation failed", extra=[error]) from None


async def validate_submission(
    inference: InferenceService, model_type: str, body: bytes
) -> tuple[str, InferenceRequest, list[DecodedImage]]:
    """The canonical model type, the request and its decoded images.

    Raises:
        VisionError: What a synchronous request with this body would get (400 / 404 / 413).
    """
    name = inference.pool.registry.canonical(model_type)
    if name not in SCHEMAS:
        raise NotFoundError(f"Model type {name} has no inference endpoint yet, so no jobs.")
    request = parse_body(name, body)
    inference.pool.resolve(name, request.variant)  # unknown variant: 404 before any fetch
    images = await inference.decode(request)
    return name, request, images
