"""What a job carries and how it runs: shared by the in-process backend and the arq worker.

A job carries the validated image bytes (not pixels) and the request's other fields, encoded
with msgspec msgpack; running it re-decodes the bytes (cheap: they were validated at submit)
and calls the same :meth:`InferenceService.run_decoded` as the synchronous endpoints, so a job's
result is exactly what the synchronous endpoint would have answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from engines.errors import UnavailableError, VisionError
from service.images import DecodedImage
from service.inference import InferenceService
from service.schemas.common import InferenceRequest

log = logging.getLogger(__name__)


class JobPayload(msgspec.Struct, kw_only=True, array_like=True):
    """A queued job: the canonical model type, the request, the validated image bytes.

    ``request`` is the request encoded with msgpack, its ``images`` replaced by references
    (``"job-image:<i>"``) to ``images[i]``, so that it still validates against its schema.
    """

    model_type: str
    request: bytes
    images: list[bytes]


@dataclass
class JobOutcome:
    """How one run of a job ended: a response, or an error for the API's user."""

    response: msgspec.Struct | None = None
    error: str | None = None
    retry_after_s: int | None = None  # set for "not now" errors (503): worth another try


def encode_payload(
    model_type: str, request: InferenceRequest, images: Sequence[DecodedImage]
) -> bytes:
    """The msgpack bytes that go onto the queue."""
    refs = [f"job-image:{i}" for i in range(len(images))]
    stripped = msgspec.structs.replace(request, images=refs)  # type: ignore[type-var]
    return msgspec.msgpack.encode(
        JobPayload(
            model_type=model_type,
            request=msgspec.msgpack.encode(stripped),
            images=[image.data for image in images],
        )
    )


def decode_payload(
    raw: bytes, request_types: Mapping[str, type[Any]]
) -> tuple[str, InferenceRequest, list[bytes]]:
    """The model type, the request (image references in place of images) and the bytes.

    Args:
        raw: What :func:`encode_payload` wrote.
        request_types: Canonical model type → its request Struct.
    """
    payload = msgspec.msgpack.decode(raw, type=JobPayload)
    request = msgspec.msgpack.decode(payload.request, type=request_types[payload.model_type])
    return payload.model_type, request, payload.images


async def run_inference(
    inference: InferenceService,
    model_type: str,
    request: InferenceRequest,
    images: Sequence[DecodedImage | bytes],
) -> JobOutcome:
    """Run a job's inference; never raises but for cancellation.

    ``images`` are decoded images (in-process backend) or their validated bytes (from the
    queue), which are decoded again here.
    """
    started = time.perf_counter()
    try:
        decoded = [
            image
            if isinstance(image, DecodedImage)
            else await asyncio.to_thread(inference.decoder.decode_bytes, index, image)
            for index, image in enumerate(images)
        ]
        endpoint = inference.endpoint(model_type)
        resolved = inference.resolve(endpoint, request)
        response = await inference.run_decoded(resolved, request, decoded, started, endpoint)
    except UnavailableError as exc:
        return JobOutcome(error=exc.detail, retry_after_s=exc.retry_after_s or 5)
    except VisionError as exc:
        return JobOutcome(error=exc.detail)
    except Exception as exc:  # the job fails; the worker keeps going
        log.exception("job on %s failed", model_type)
        return JobOutcome(
            error=f"Internal error while running the job ({type(exc).__name__}); "
            "the server log has the details."
        )
    return JobOutcome(response=response)
