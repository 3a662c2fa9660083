"""The app factory: everything is wired here, nothing at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from engines.base import VariantSpec
from engines.pool import ModelPool, PoolConfig
from engines.registry import FamilyRegistry, VariantTable, default_registry
from service import __version__
from service.errors import EXCEPTION_HANDLERS
from service.images import ImageDecoder
from service.inference import InferenceService
from service.jobs.base import JobBackend
from service.routes.inference import InferenceController
from service.routes.models import ModelsController
from service.routes.system import health, redoc, root, swagger_ui
from service.settings import Settings
from service.urlfetch import UrlFetcher, UrlPolicy

log = logging.getLogger(__name__)


def build_pool(settings: Settings, registry: FamilyRegistry | None = None) -> ModelPool:
    """The model pool described by ``settings``."""
    runtime = settings.runtime
    tables = {
        model_type: VariantTable(
            config.default_variant or "",
            {
                name: VariantSpec(name, v.source, v.license or "see the checkpoint's model card")
                for name, v in config.variants.items()
            },
        )
        for model_type, config in settings.models.items()
    }
    config = PoolConfig(
        device=runtime.device,
        dtype=runtime.dtype,
        engine=runtime.engine,
        torch_threads=runtime.torch_threads,
        lazy_loading=runtime.lazy_loading,
        max_batch_size=runtime.max_batch_size,
        compute_workers=runtime.compute_workers,
        hf_token=settings.hf_token,
        artifacts_dir=Path(runtime.artifacts_dir),
        onnx_precision=runtime.onnx_precision,
        ort_providers=tuple(runtime.ort_providers),
        ort_optimization=runtime.ort_optimization,
        variants=tables,
    )
    return ModelPool(registry or default_registry(), config)


def build_inference(settings: Settings, pool: ModelPool) -> InferenceService:
    """Image decoding under the URL policy, around the pool."""
    urls = settings.urls
    policy = UrlPolicy.build(
        urls.url_timeout_s, urls.url_max_bytes, urls.url_max_redirects, urls.url_allowed_networks
    )
    decoder = ImageDecoder(UrlFetcher(policy), settings.limits.max_image_pixels)
    return InferenceService(pool, decoder, settings.limits.max_images_per_request)


def build_jobs(settings: Settings, inference: InferenceService) -> JobBackend:
    """The job backend: Redis (arq) when ``redis_url`` is set, in-process otherwise."""
    from service.jobs.factory import create_backend

    return create_backend(settings, inference)


def create_app(
    settings: Settings | None = None, registry: FamilyRegistry | None = None
) -> Litestar:
    """Build the Litestar app for ``settings`` (read from the environment when omitted).

    ``registry`` replaces the built-in model families (tests drive HTTP mechanics with it).
    """
    settings = settings or Settings.load()
    pool = build_pool(settings, registry)
    inference = build_inference(settings, pool)
    jobs = build_jobs(settings, inference)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.started_at = time.monotonic()
        for model_type in settings.runtime.preload:
            name, _, variant = model_type.partition(":")
            await pool.load(name, variant or None)
        await jobs.start()
        try:
            yield
        finally:
            await jobs.close()
            await pool.close()

    from service.routes.jobs import JobsController

    return Litestar(
        route_handlers=[
            root,
            health,
            swagger_ui,
            redoc,
            ModelsController,
            InferenceController,
            JobsController,
        ],
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "pool": Provide(lambda: pool, use_cache=True, sync_to_thread=False),
            "inference": Provide(lambda: inference, use_cache=True, sync_to_thread=False),
            "jobs": Provide(lambda: jobs, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app()
