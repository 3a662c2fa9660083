"""Running one inference request: limits, image decoding, the pool, the response.

Shared by the synchronous endpoints and the job workers, so a job's result is exactly what the
synchronous endpoint would have answered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from engines.base import DeferredImage, ImageHandle
from engines.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from engines.pool import ModelPool, PoolImage, ResolvedModel
from service.arrays import convert
from service.images import DecodedImage, ImageDecoder
from service.schemas.common import Endpoint, ImageInput, InferenceRequest, InferenceResponse


class InferenceService:
    """Decodes a request's images and runs them through the pool.

    Args:
        pool: The model pool.
        decoder: Image decoding under the URL policy and pixel limit.
        max_images: Most images in one request (413 beyond).
        endpoints: Endpoint name (``Endpoint.name``) → the endpoint (request and response
            types).
        max_prompts: Most prompts in one request (413 beyond), for models that take prompts;
            None leaves only each model's own bound.
        max_task_images: Endpoint name → most images in one request of that task endpoint
            (a scene's views), in place of ``max_images``.
    """

    def __init__(
        self,
        pool: ModelPool,
        decoder: ImageDecoder,
        max_images: int,
        endpoints: Mapping[str, Endpoint],
        max_prompts: int | None = None,
        max_task_images: Mapping[str, int] | None = None,
    ) -> None:
        self.pool = pool
        self.decoder = decoder
        self.max_images = max_images
        self.max_task_images = dict(max_task_images or {})
        self.max_prompts = max_prompts
        self.endpoints = dict(endpoints)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name``: a model type or alias, or a task's ``<model>-<task>``.

        Raises:
            NotFoundError: Unknown model type, or one without an inference endpoint.
        """
        if name in self.endpoints:
            return self.endpoints[name]
        canonical = self.pool.registry.canonical(name)
        try:
            return self.endpoints[canonical]
        except KeyError:
            raise NotFoundError(f"Model type {canonical} has no inference endpoint.") from None

    def check_count(self, images: Sequence[ImageInput], endpoint: Endpoint | None = None) -> None:
        """Raise a 413 error when a request has more images than allowed."""
        limit = self.max_images
        if endpoint is not None:
            limit = self.max_task_images.get(endpoint.name, limit)
        if len(images) > limit:
            what = "views in one scene" if endpoint is not None and endpoint.task else "images"
            raise PayloadTooLargeError(
                f"{len(images)} {what} in one request; at most {limit} are allowed. "
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

    async def decode(
        self, request: InferenceRequest, endpoint: Endpoint | None = None
    ) -> list[DecodedImage]:
        """Check the image and prompt counts, fetch and decode every image."""
        self._check_counts(request, endpoint)
        return await self.decoder.decode_all(request.images)

    async def defer(
        self, request: InferenceRequest, endpoint: Endpoint
    ) -> list[DeferredImage | ImageHandle]:
        """Check the image and prompt counts, fetch every URL; decoding is left to the pool."""
        self._check_counts(request, endpoint)
        return await self.decoder.defer_all(request.images)

    def _check_counts(self, request: InferenceRequest, endpoint: Endpoint | None) -> None:
        self.check_count(request.images, endpoint)
        self.check_prompts(request)

    def resolve(self, endpoint: Endpoint, request: InferenceRequest) -> ResolvedModel:
        """The request's model (404 for an unknown variant); a task's budget checked (413).

        Both before any image is fetched or decoded.
        """
        resolved = self.pool.resolve(endpoint.model_type, request.variant)
        if endpoint.task is not None:
            self.pool.check_task(resolved, endpoint.task, len(request.images), request)
        return resolved

    async def run(self, name: str, request: InferenceRequest) -> InferenceResponse:
        """Decode and infer; the response of the endpoint called ``name``."""
        started = time.perf_counter()
        endpoint = self.endpoint(name)
        resolved = self.resolve(endpoint, request)
        # A task the model cannot run (a scene of a model without cameras) is a 400 before any
        # image is fetched or the model loaded; a loaded model's pipeline refuses it at once.
        if endpoint.task is not None and not self.pool.is_loaded(resolved):
            await self.pool.check_options(resolved, request)
        if endpoint.task is None and self.pool.is_loaded(resolved):
            # Decoded where they are pre-processed (one thread hop, not two). Not for a model
            # still to load: a bad image is a 400 before a load it would have wasted.
            deferred = await self.defer(request, endpoint)
            return await self._respond(resolved, request, deferred, started, endpoint)
        images = await self.decode(request, endpoint)
        return await self.run_decoded(resolved, request, images, started, endpoint)

    async def run_decoded(
        self,
        resolved: ResolvedModel,
        request: InferenceRequest,
        images: Sequence[DecodedImage],
        started: float | None = None,
        endpoint: Endpoint | None = None,
    ) -> InferenceResponse:
        """Infer on already decoded images (the job worker's entry point).

        ``endpoint`` defaults to the model type's per-image endpoint.
        """
        started = time.perf_counter() if started is None else started
        endpoint = endpoint or self.endpoints[resolved.model_type]
        pixels = [
            self.decoder.for_pool(i, d) if endpoint.task is None else d.image
            for i, d in enumerate(images)
        ]
        return await self._respond(resolved, request, pixels, started, endpoint)

    async def _respond(
        self,
        resolved: ResolvedModel,
        request: InferenceRequest,
        pixels: Sequence[PoolImage],
        started: float,
        endpoint: Endpoint,
    ) -> InferenceResponse:
        """Run the pool on the request's images (decoded or deferred): the response."""
        decode_ms = (time.perf_counter() - started) * 1e3
        if endpoint.task is None:
            outcome = await self.pool.run(resolved, pixels, request)
            body: dict[str, Any] = {"results": outcome.results}
        else:
            frames = [image for image in pixels if isinstance(image, Image.Image)]
            if len(frames) != len(pixels):  # image_id items are refused at the edge already
                raise InvalidInputError(f"{endpoint.name} takes images, not image_id items.")
            outcome = await self.pool.run_task(resolved, endpoint.task, frames, request)
            body = dict(outcome.results[0])
        timings: dict[str, Any] = dict(outcome.timings_ms)
        # Before the pool (fetching URLs, decoding), plus any decoding the pool did itself.
        timings["decode"] = decode_ms + timings.get("decode", 0.0)
        timings["total"] = (time.perf_counter() - started) * 1e3
        body.update(
            model_type=resolved.model_type,
            variant=outcome.model.variant,
            engine=outcome.model.engine,
            device=outcome.model.device,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )
        return convert(body, endpoint.response)  # numpy arrays stay arrays (service/arrays.py)
