"""Settings → the objects that serve: the one place a model pool is built.

The app (:func:`service.app.create_app`), the arq worker (``vision-api worker``) and the export
CLI (``vision-api export``) all build their pool here, so the three read the settings the same
way.
"""

from __future__ import annotations

from pathlib import Path

from engines.base import VariantSpec
from engines.pool import ModelPool, PoolConfig
from engines.registry import FamilyRegistry, VariantTable, default_registry
from service.endpoints import discover_endpoints
from service.images import ImageDecoder
from service.inference import InferenceService
from service.schemas.common import Endpoint
from service.settings import Settings
from service.urlfetch import UrlFetcher, UrlPolicy


def pool_config(settings: Settings) -> PoolConfig:
    """The pool's configuration from the ``runtime`` group and the configured variants."""
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
    return PoolConfig(
        device=runtime.device,
        dtype=runtime.dtype,
        engine=runtime.engine,
        torch_threads=runtime.torch_threads,
        lazy_loading=runtime.lazy_loading,
        max_batch_size=runtime.max_batch_size,
        max_batch_delay_ms=runtime.max_batch_delay_ms,
        batch_limits={
            model_type: (config.max_batch_size, config.max_batch_delay_ms)
            for model_type, config in settings.models.items()
            if config.max_batch_size is not None or config.max_batch_delay_ms is not None
        },
        compute_workers=runtime.compute_workers,
        keep_freed_memory=runtime.keep_freed_memory,
        max_in_flight_per_model=runtime.max_in_flight_per_model,
        memory_budget_mb=runtime.memory_budget_mb,
        min_residency_s=runtime.min_residency_s,
        hf_token=settings.hf_token,
        artifacts_dir=Path(runtime.artifacts_dir),
        onnx_precision=runtime.onnx_precision,
        ort_providers=tuple(runtime.ort_providers),
        ort_optimization=runtime.ort_optimization,
        cpu_bf16=runtime.cpu_bf16,
        image_cache_mb=runtime.sam3_cache_mb,  # only SAM3 keeps a per-image cache
        image_cache_ttl_s=runtime.sam3_cache_ttl_s,
        uint8_resize=runtime.uint8_resize,
        variants=tables,
        task_budgets={
            "depth-anything/scene": {
                "cpu": runtime.scene_view_budget_cpu,
                "cuda": runtime.scene_view_budget_cuda,
            }
        },
    )


def build_pool(settings: Settings, registry: FamilyRegistry | None = None) -> ModelPool:
    """The model pool described by ``settings`` (every built-in family unless ``registry``)."""
    return ModelPool(registry or default_registry(), pool_config(settings))


def build_inference(
    settings: Settings, pool: ModelPool, endpoints: dict[str, Endpoint] | None = None
) -> InferenceService:
    """Image decoding under the URL policy, around the pool, for the families' endpoints.

    Raises:
        EndpointMismatchError: The HTTP schemas and the pool's families disagree.
    """
    urls = settings.urls
    policy = UrlPolicy.build(
        urls.url_timeout_s, urls.url_max_bytes, urls.url_max_redirects, urls.url_allowed_networks
    )
    decoder = ImageDecoder(
        UrlFetcher(policy),
        settings.limits.max_image_pixels,
        shrink_on_load=settings.runtime.shrink_on_load,
    )
    if endpoints is None:
        endpoints = discover_endpoints(pool.registry)
    return InferenceService(
        pool,
        decoder,
        settings.limits.max_images_per_request,
        endpoints,
        max_prompts=settings.limits.max_prompts_per_request,
        max_task_images={"depth-anything-scene": settings.limits.max_scene_views},
    )


def build_worker_inference(settings: Settings) -> InferenceService:
    """What a standalone job worker runs jobs with: the same as the API's."""
    return build_inference(settings, build_pool(settings))


async def preload(settings: Settings, pool: ModelPool) -> None:
    """Load ``runtime.preload`` (``model_type`` or ``model_type:variant`` entries), pinned.

    Preloaded models are never unloaded to make room in the memory budget.
    """
    for entry in settings.runtime.preload:
        name, _, variant = entry.partition(":")
        await pool.load(name, variant or None, pinned=True)
