"""``GET /``, ``GET /health``, the probes, ``/metrics`` and the documentation pages."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import openapi_ui_bundles.redoc
import openapi_ui_bundles.swagger_ui
import psutil
from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin

from engines.devices import list_gpus
from engines.errors import NotFoundError, UnavailableError
from engines.pool import ModelPool
from service import __version__
from service.jobs.base import JobBackend
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.schemas.errors import ErrorBody
from service.schemas.health import Liveness, Readiness
from service.schemas.system import (
    DeviceInfo,
    Gpu,
    Health,
    JobsHealth,
    LoadedModelInfo,
    MemoryInfo,
    RootInfo,
)

OPENAPI_PATH = "/schema/openapi.json"
NOT_READY_RETRY_AFTER_S = 5
DOC_ASSETS_PATH = "/docs/assets"
# The documentation pages' scripts and styles, served from the openapi-ui-bundles package so
# /docs and /redoc render with no internet (name -> file, content type).
DOC_ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (
        openapi_ui_bundles.swagger_ui.static_path / "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
    ),
    "swagger-ui-standalone-preset.js": (
        openapi_ui_bundles.swagger_ui.static_path / "swagger-ui-standalone-preset.js",
        "text/javascript; charset=utf-8",
    ),
    "swagger-ui.css": (
        openapi_ui_bundles.swagger_ui.static_path / "swagger-ui.css",
        "text/css; charset=utf-8",
    ),
    "favicon-32x32.png": (
        openapi_ui_bundles.swagger_ui.static_path / "favicon-32x32.png",
        "image/png",
    ),
    "redoc.standalone.js": (
        openapi_ui_bundles.redoc.static_path / "redoc.standalone.js",
        "text/javascript; charset=utf-8",
    ),
    "logo-mini.svg": (openapi_ui_bundles.redoc.static_path / "logo-mini.svg", "image/svg+xml"),
}
# ReDoc's sidebar footer loads its logo from a CDN; the package ships the same file.
OFFLINE_REWRITES: dict[str, tuple[tuple[bytes, bytes], ...]] = {
    "redoc.standalone.js": (
        (b"https://cdn.redoc.ly/redoc/logo-mini.svg", f"{DOC_ASSETS_PATH}/logo-mini.svg".encode()),
    ),
}
FAVICON = f"<link rel='icon' type='image/png' href='{DOC_ASSETS_PATH}/favicon-32x32.png'>"


@get("/", tags=["system"], summary="What this server is")
async def root(pool: NamedDependency[ModelPool]) -> RootInfo:
    """Name, version, the docs' locations and the model types served."""
    return RootInfo(
        name="Vision Models API",
        version=__version__,
        docs="/docs",
        redoc="/redoc",
        openapi=OPENAPI_PATH,
        models=pool.registry.names(),
    )


@get("/health", tags=["system"], summary="Liveness, devices, memory, loaded models, jobs")
async def health(
    request: Request, pool: NamedDependency[ModelPool], jobs: NamedDependency[JobBackend]
) -> Health:
    """Answers while models compute: nothing here waits for the compute threads."""
    memory = psutil.virtual_memory()
    jobs_ok, jobs_detail = await jobs.health()
    gpus = list_gpus()
    return Health(
        status="ok",
        version=__version__,
        uptime_s=round(time.monotonic() - request.app.state.started_at, 3),
        device=DeviceInfo(
            cuda_available=None if gpus is None else bool(gpus),
            gpus=None if gpus is None else [Gpu(**vars(g)) for g in gpus],
        ),
        memory=MemoryInfo(
            process_rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1),
            system_total_mb=round(memory.total / 2**20, 1),
            system_available_mb=round(memory.available / 2**20, 1),
        ),
        models_loaded=[
            LoadedModelInfo(
                model_type=m.model_type, variant=m.variant, device=m.device, engine=m.engine
            )
            for m in pool.loaded()
        ],
        jobs=JobsHealth(backend=jobs.name, ok=jobs_ok, detail=jobs_detail),
    )


@get("/health/live", tags=["system"], summary="Liveness probe: the process answers")
async def live() -> Liveness:
    """200 while the process runs, also while models load or compute (nothing here waits)."""
    return Liveness()


@get(
    "/health/ready",
    tags=["system"],
    summary="Readiness probe: start-up done, preloaded models warm, job store answering",
    responses={
        503: ResponseSpec(ErrorBody, description="Not ready; `detail` says why (Retry-After).")
    },
)
async def ready(lifecycle: NamedDependency[Lifecycle]) -> Readiness:
    """503 while not ready, ``detail`` saying why.

    Why: starting, preloading (``detail`` names the model), shutting down, a failed preload,
    or a configured job store that does not answer.
    """
    reason = await lifecycle.readiness()
    if reason is not None:
        raise UnavailableError(reason, retry_after_s=NOT_READY_RETRY_AFTER_S)
    return Readiness()


@get(
    "/metrics",
    tags=["system"],
    summary="Prometheus metrics",
    media_type="text/plain; version=0.0.4",
)
async def metrics(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    """The Prometheus text format.

    Requests and latency per route, images, batch sizes, model loads, loaded models and their
    memory, requests in flight, cache hits, jobs by status.
    """
    body, content_type = await metrics.exposition()
    return Response(body, media_type=content_type)


@get("/docs", include_in_schema=False, media_type=MediaType.HTML)
async def swagger_ui(request: Request) -> Response[bytes]:
    """Swagger UI over the generated schema."""
    return _render(
        request,
        SwaggerRenderPlugin(
            js_url=f"{DOC_ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{DOC_ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{DOC_ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=FAVICON,
        ),
    )


@get("/redoc", include_in_schema=False, media_type=MediaType.HTML)
async def redoc(request: Request) -> Response[bytes]:
    """ReDoc over the generated schema."""
    return _render(
        request,
        RedocRenderPlugin(
            js_url=f"{DOC_ASSETS_PATH}/redoc.standalone.js", google_fonts=False, favicon=FAVICON
        ),
    )


@get(f"{DOC_ASSETS_PATH}/{{name:str}}", include_in_schema=False)
async def doc_asset(name: str) -> Response[bytes]:
    """A script, stylesheet or image of the documentation pages (a fixed list; 404 otherwise)."""
    if name not in DOC_ASSETS:
        raise NotFoundError(f"No documentation asset named {name!r}.")
    return static_response(_doc_asset_bytes(name), DOC_ASSETS[name][1])


@functools.cache
def _doc_asset_bytes(name: str) -> bytes:
    body = DOC_ASSETS[name][0].read_bytes()
    for external, local in OFFLINE_REWRITES.get(name, ()):
        body = body.replace(external, local)
    return body


def static_response(body: bytes, media_type: str) -> Response[bytes]:
    """A packaged file's bytes, cacheable by the browser for an hour."""
    return Response(body, media_type=media_type, headers={"cache-control": "max-age=3600"})


def _render(request: Request, plugin: SwaggerRenderPlugin | RedocRenderPlugin) -> Response[bytes]:
    schema = request.app.openapi_schema.to_schema()
    return Response(plugin.render(request, schema), media_type=MediaType.HTML)
