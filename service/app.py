"""The app factory: everything is wired here, nothing at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import numpy as np
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from engines.registry import FamilyRegistry
from service import __version__
from service.arrays import encode_json
from service.endpoints import discover_endpoints
from service.errors import EXCEPTION_HANDLERS
from service.inference import InferenceService
from service.jobs.base import JobBackend
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.request_ids import configure_logging, request_id_middleware
from service.routes.inference import inference_router
from service.routes.jobs import jobs_router
from service.routes.models import ModelsController
from service.routes.playground import playground, playground_asset
from service.routes.sam3 import sam3_embed
from service.routes.system import (
    doc_asset,
    health,
    live,
    metrics,
    ready,
    redoc,
    root,
    swagger_ui,
)
from service.schemas.common import Endpoint
from service.security import SecurityPlugin
from service.settings import Settings
from service.wiring import build_inference, build_pool

log = logging.getLogger(__name__)


def build_jobs(settings: Settings, inference: InferenceService) -> JobBackend:
    """The job backend: Redis (arq) when ``redis_url`` is set, in-process otherwise."""
    from service.jobs.factory import create_backend

    return create_backend(settings, inference)


def create_app(
    settings: Settings | None = None,
    registry: FamilyRegistry | None = None,
    endpoints: Sequence[Endpoint] = (),
) -> Litestar:
    """Build the Litestar app for ``settings`` (read from the environment when omitted).

    Args:
        settings: The settings; ``Settings.load()`` when omitted.
        registry: Replaces the built-in model families (tests drive HTTP mechanics with it).
        endpoints: Endpoints of families whose schema module is not in ``service/schemas``.

    Raises:
        EndpointMismatchError: The HTTP schemas and the family registry disagree.
    """
    settings = settings or Settings.load()
    pool = build_pool(settings, registry)
    inference = build_inference(settings, pool, discover_endpoints(pool.registry, endpoints))
    jobs = build_jobs(settings, inference)
    served = list(inference.endpoints.values())
    observed = Metrics(pool, jobs)
    lifecycle = Lifecycle(settings, pool, jobs, observed)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.started_at = time.monotonic()
        async with lifecycle.serving():  # preload in the background, graceful shutdown
            yield

    return Litestar(
        route_handlers=[
            root,
            health,
            live,
            ready,
            metrics,
            swagger_ui,
            redoc,
            doc_asset,
            playground,
            playground_asset,
            ModelsController,
            inference_router(served),
            sam3_embed,
            jobs_router(served),
        ],
        middleware=[request_id_middleware, lifecycle.middleware, observed.middleware],
        logging_config=None,  # configure_logging's format (with the request id) stays
        # Depth maps and patch features leave the pipelines as numpy arrays (service/arrays.py).
        type_encoders={np.ndarray: encode_json},
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "pool": Provide(lambda: pool, use_cache=True, sync_to_thread=False),
            "inference": Provide(lambda: inference, use_cache=True, sync_to_thread=False),
            "jobs": Provide(lambda: jobs, use_cache=True, sync_to_thread=False),
            "lifecycle": Provide(lambda: lifecycle, use_cache=True, sync_to_thread=False),
            "metrics": Provide(lambda: observed, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        plugins=[SecurityPlugin(settings)],  # API keys, rate limit, CORS
        lifespan=[lifespan],
        request_max_body_size=int(settings.limits.max_body_mb * 2**20),
        openapi_config=OpenAPIConfig(
            title="Vision Models API",
            version=__version__,
            description="Segmentation (SAM3), open-vocabulary detection (GroundingDINO), depth "
            "(Depth Anything) and features (DINOv3) behind one HTTP API.",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        debug=False,
    )


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory service.app:app_from_env`` (reads ``VISION_API_*``)."""
    settings = Settings.load()
    configure_logging(settings.server.log_level, settings.server.log_format)
    return create_app(settings)
