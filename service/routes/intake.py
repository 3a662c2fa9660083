"""Validating a job submission exactly as the synchronous endpoint would, before queueing.

The body's schema depends on the path's model type, so the route reads raw bytes and this
module decodes them; validation errors are raised as Litestar's own exceptions, shaped as
Litestar shapes them for the synchronous endpoints, so both answer the same 400. This is HTTP
edge code: it lives with the routes, not with the job backends.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar.exceptions import ClientException, ValidationException

from engines.pool import ResolvedModel
from service.images import DecodedImage
from service.inference import InferenceService
from service.schemas.common import Endpoint, InferenceRequest

_LOCATION = re.compile(r"`\$\.(.+)`$")


def parse_body(model_type: str, request_type: type[Any], body: bytes) -> InferenceRequest:
    """Decode ``body`` into ``request_type``, the request schema of ``model_type``.

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
        request: InferenceRequest = msgspec.convert(raw, request_type, strict=False)
        return request
    except msgspec.ValidationError as exc:
        message, _, _ = str(exc).partition(" - ")
        located = _LOCATION.search(str(exc))
        error = {
            "message": message,
            "key": located.group(1) if located else "data",
            "source": "body",
        }
        raise ValidationException(detail="Validation failed", extra=[error]) from None


async def validate_submission(
    inference: InferenceService, name: str, body: bytes
) -> tuple[Endpoint, ResolvedModel, InferenceRequest, list[DecodedImage]]:
    """The endpoint called ``name``, the resolved model, the request and its decoded images.

    Raises:
        VisionError: What a synchronous request with this body would get (400 / 404 / 413).
    """
    endpoint = inference.endpoint(name)
    request = parse_body(endpoint.path.lstrip("/"), endpoint.request, body)
    resolved = inference.resolve(endpoint, request)  # 404 / 413 before fetching
    await inference.pool.check_options(resolved, request)  # e.g. a prompt over the token limit
    images = await inference.decode(request, endpoint)
    return endpoint, resolved, request, images
