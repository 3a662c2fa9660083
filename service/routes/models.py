"""``/models``: status, load, unload."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body

from engines.pool import ModelPool
from service.routes.responses import error_responses
from service.schemas.models import (
    ModelLoadRequest,
    ModelRef,
    ModelStatus,
    ModelStatusList,
    ModelUnloadRequest,
    UnloadResult,
)

LOAD_EXAMPLE = Example(
    summary="Load SAM3's default variant on the first GPU, ONNX Runtime if exported",
    value={"model_type": "sam3", "device": "cuda:0", "engine": "auto"},
)
UNLOAD_EXAMPLE = Example(
    summary="Unload one Depth Anything variant",
    value={"model_type": "depth-anything", "variant": "small"},
)


class ModelsController(Controller):
    """Model lifecycle."""

    path = "/models"
    tags = ["models"]

    @get("/status", summary="Every known variant, loaded or not")
    async def status(self, pool: NamedDependency[ModelPool]) -> ModelStatusList:
        """One entry per (model type, variant)."""
        return msgspec.convert({"models": pool.status()}, ModelStatusList)

    @post(
        "/load",
        status_code=200,
        summary="Load a variant",
        responses=error_responses(400, 404, 413, 500, 503),
    )
    async def load(
        self,
        data: Annotated[ModelLoadRequest, Body(examples=[LOAD_EXAMPLE])],
        pool: NamedDependency[ModelPool],
    ) -> ModelStatus:
        """Load (a no-op when already loaded the same way) and return its status entry."""
        model = await pool.load(
            data.model_type, data.variant, device=data.device, engine=data.engine
        )
        entry = next(
            e
            for e in pool.status()
            if e["model_type"] == model.model_type and e["variant"] == model.variant
        )
        return msgspec.convert(entry, ModelStatus)

    @post(
        "/unload",
        status_code=200,
        summary="Unload one variant or every variant of a type",
        responses=error_responses(400, 404, 413, 503),
    )
    async def unload(
        self,
        data: Annotated[ModelUnloadRequest, Body(examples=[UNLOAD_EXAMPLE])],
        pool: NamedDependency[ModelPool],
    ) -> UnloadResult:
        """Unload; what was not loaded is simply not listed."""
        unloaded = await pool.unload(data.model_type, data.variant)
        return UnloadResult(unloaded=[ModelRef(model_type=t, variant=v) for t, v in unloaded])

    @post("/unload-all", status_code=200, summary="Unload every model")
    async def unload_all(self, pool: NamedDependency[ModelPool]) -> UnloadResult:
        """Unload everything."""
        unloaded = await pool.unload_all()
        return UnloadResult(unloaded=[ModelRef(model_type=t, variant=v) for t, v in unloaded])
