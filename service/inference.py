"""Running one inference request: limits, image decoding, the pool, the response.

Shared by the synchronous endpoints and the job workers, so a job's result is exactly what the
synchronous endpoint would have answered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from engines.errors import PayloadTooLargeError
from engines.pool import ModelPool
from service.images import DecodedImage, ImageDecoder
from service.schemas.common import ImageInput, InferenceRequest, InferenceResponse
from service.schemas.depth_anything import DepthAnythingRequest, DepthAnythingResponse
from service.schemas.dinov3 import Dinov3Request, Dinov3Response
from service.schemas.grounding_dino import GroundingDinoRequest, GroundingDinoResponse
from service.schemas.sam3 import Sam3Request, Sam3Response

# Model type → (request schema, response schema). Families add their line here.
SCHEMAS: dict[str, tuple[type[InferenceRequest], type[InferenceResponse]]] = {
    "dinov3": (Dinov3Request, Dinov3Response),
    "grounding-dino": (GroundingDinoRequest, GroundingDinoResponse),
    "sam3": (Sam3Request, Sam3Response),
    "depth-anything": (DepthAnythingRequest, DepthAnythingResponse),
}


class InferenceService:
    """Decodes a request's images and runs them through the pool.

    Args:
        pool: The model pool.
        decoder: Image decoding under the URL policy and pixel limit.
        max_images: Most images in one request (413 beyond).
    """

    def __init__(self, pool: ModelPool, decoder: ImageDecoder, max_images: int) -> None:
        self.pool = pool
        self.decoder = decoder
        self.max_images = max_images

    def check_count(self, images: Sequence[ImageInput]) -> None:
        """Raise a 413 error when a request has more images than allowed."""
        if len(images) > self.max_images:
            raise PayloadTooLargeError(
                f"{len(images)} images in one request; at most {self.max_images} are allowed. "
                "Split the request or submit several jobs."
            )

    async def decode(self, request: InferenceRequest) -> list[DecodedImage]:
        """Check the count, fetch and decode every image."""
        self.check_count(request.images)
        return await self.decoder.decode_all(request.images)

    async def run(self, model_type: str, request: InferenceRequest) -> InferenceResponse:
        """Decode and infer; the response of ``model_type``'s endpoint."""
        started = time.perf_counter()
        self.pool.resolve(model_type, request.variant)  # a 404 before any image is fetched
        images = await self.decode(request)
        return await self.run_decoded(model_type, request, images, started)

    async def run_decoded(
        self,
        model_type: str,
        request: InferenceRequest,
        images: Sequence[DecodedImage],
        started: float | None = None,
    ) -> InferenceResponse:
        """Infer on already decoded images (the job worker's entry point)."""
        started = time.perf_counter() if started is None else started
        decode_ms = (time.perf_counter() - started) * 1e3
        name = self.pool.registry.canonical(model_type)
        outcome = await self.pool.infer(name, request.variant, [d.image for d in images], request)
        timings: dict[str, Any] = {"decode": decode_ms, **outcome.timings_ms}
        timings["total"] = (time.perf_counter() - started) * 1e3
        response_type = SCHEMAS[name][1]
        return msgspec.convert(
            {
                "model_type": name,
                "variant": outcome.model.variant,
                "engine": outcome.model.engine,
                "device": outcome.model.device,
                "results": outcome.results,
                "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            },
            response_type,
        )
