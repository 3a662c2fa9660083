"""Running one inference request: limits, image decoding, the pool, the response.

Shared by the synchronous endpoints and the job workers, so a job's result is exactly what the
synchronous endpoint would have answered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from engines.errors import NotFoundError, PayloadTooLargeError
from engines.pool import ModelPool, ResolvedModel
from service.images import DecodedImage, ImageDecoder
from service.schemas.common import Endpoint, ImageInput, InferenceRequest, InferenceResponse


class InferenceService:
    """Decodes a request's images and runs them through the pool.

    Args:
        pool: The model pool.
        decoder: Image decoding under the URL policy and pixel limit.
        max_images: Most images in one request (413 beyond).
        endpoints: Canonical model type → its endpoint (request and response types).
        max_prompts: Most prompts in one request (413 beyond), for models that take prompts;
            None leaves only each model's own bound.
    """

    def __init__(
        self,
        pool: ModelPool,
        decoder: ImageDecoder,
        max_images: int,
        endpoints: Mapping[str, Endpoint],
        max_prompts: int | None = None,
    ) -> None:
        self.pool = pool
        self.decoder = decoder
        self.max_images = max_images
        self.max_prompts = max_prompts
        self.endpoints = dict(endpoints)

    def endpoint(self, model_type: str) -> Endpoint:
        """The endpoint of a model type or alias.

        Raises:
            NotFoundError: Unknown model type, or one without an inference endpoint.
        """
        name = self.pool.registry.canonical(model_type)
        try:
            return self.endpoints[name]
        except KeyError:
            raise NotFoundError(f"Model type {name} has no inference endpoint.") from None

    def check_count(self, images: Sequence[ImageInput]) -> None:
        """Raise a 413 error when a request has more images than allowed."""
        if len(images) > self.max_images:
            raise PayloadTooLargeError(
                f"{len(images)} images in one request; at most {self.max_images} are allowed. "
                "Split the request or submit several jobs."
            )

    def check_prompts(self, request: InferenceRequest) -> None:
        """Raise a 413 error when a request has more prompts than the server allows."""
        prompts = getattr(request, "prompts", None)
        if self.max_prompts is not None and prompts is not None and len(prompts) > self.max_prompts:
            raise PayloadTooLargeError(
                f"{len(prompts)} prompts in one request; this server allows at most "
                f"{self.max_prompts} (max_prompts_per_request). Split the prompts over several "
                "requests."
            )

    async def decode(self, request: InferenceRequest) -> list[DecodedImage]:
        """Check the image and prompt counts, fetch and decode every image."""
        self.check_count(request.images)
        self.check_prompts(request)
        return await self.decoder.decode_all(request.images)

    async def run(self, model_type: str, request: InferenceRequest) -> InferenceResponse:
        """Decode and infer; the response of ``model_type``'s endpoint."""
        started = time.perf_counter()
        resolved = self.pool.resolve(model_type, request.variant)  # 404 before any fetch
        images = await self.decode(request)
        return await self.run_decoded(resolved, request, images, started)

    async def run_decoded(
        self,
        resolved: ResolvedModel,
        request: InferenceRequest,
        images: Sequence[DecodedImage],
        started: float | None = None,
    ) -> InferenceResponse:
        """Infer on already decoded images (the job worker's entry point)."""
        started = time.perf_counter() if started is None else started
        decode_ms = (time.perf_counter() - started) * 1e3
        outcome = await self.pool.run(resolved, [d.image for d in images], request)
        timings: dict[str, Any] = {"decode": decode_ms, **outcome.timings_ms}
        timings["total"] = (time.perf_counter() - started) * 1e3
        return msgspec.convert(
            {
                "model_type": resolved.model_type,
                "variant": outcome.model.variant,
                "engine": outcome.model.engine,
                "device": outcome.model.device,
                "results": outcome.results,
                "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            },
            self.endpoints[resolved.model_type].response,
        )
