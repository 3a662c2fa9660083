"""``POST /inference/sam3/embed``: keep images' SAM3 embeddings for later requests by id."""

from __future__ import annotations

import time
from typing import Annotated

from litestar import post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body

from service.inference import InferenceService
from service.routes.responses import INFERENCE_ERRORS
from service.schemas.common import Timings
from service.schemas.sam3 import Sam3EmbedRequest, Sam3EmbedResponse

EXAMPLE = Example(
    summary="One image by URL; then send {image_id} items to POST /inference/sam3",
    value={"images": ["https://images.example.com/cat.jpg"]},
)


@post(
    "/inference/sam3/embed",
    status_code=200,
    summary="Encode images for SAM3 once; reuse them by image_id",
    operation_id="InferenceSam3Embed",
    tags=["inference"],
    responses=INFERENCE_ERRORS,
)
async def sam3_embed(
    data: Annotated[Sam3EmbedRequest, Body(examples=[EXAMPLE])],
    inference: NamedDependency[InferenceService],
) -> Sam3EmbedResponse:
    """Run SAM3's vision encoder on each image (unless its embedding is cached) and keep it.

    Send ``{"image_id": ...}`` in place of the image to ``POST /inference/sam3`` (or a sam3
    job) while it is kept: the request runs only the text encoder and the decoder. An image
    sent as pixels is found in the cache the same way, by its pixels; the id saves sending it.
    """
    started = time.perf_counter()
    resolved = inference.pool.resolve("sam3", data.variant)  # 404 before any fetch
    images = await inference.decode(data)
    decode_ms = (time.perf_counter() - started) * 1e3
    outcome = await inference.pool.run(resolved, [d.image for d in images], data)
    timings = {"decode": decode_ms, **outcome.timings_ms}
    timings["total"] = (time.perf_counter() - started) * 1e3
    return Sam3EmbedResponse(
        model_type=resolved.model_type,
        variant=outcome.model.variant,
        engine=outcome.model.engine,
        device=outcome.model.device,
        timings_ms=Timings(**{k: round(v, 3) for k, v in timings.items()}),
        image_ids=[r["image_id"] for r in outcome.results],
        expires_in_s=min(r["expires_in_s"] for r in outcome.results),
    )
