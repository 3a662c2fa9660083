"""``GET /`` and ``GET /health``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class RootInfo(msgspec.Struct, kw_only=True):
    """What this server is and where its docs are."""

    name: str
    version: str
    docs: str
    redoc: str
    openapi: str
    models: list[str]


class Gpu(msgspec.Struct, kw_only=True):
    """One visible GPU."""

    index: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    memory_free_mb: float


class DeviceInfo(msgspec.Struct, kw_only=True):
    """Accelerators visible to the server."""

    cuda_available: Annotated[
        bool | None, Meta(description="Null when torch is not installed in the API process.")
    ]
    gpus: Annotated[
        list[Gpu] | None, Meta(description="Null when torch is not installed in the API process.")
    ]


class MemoryInfo(msgspec.Struct, kw_only=True):
    """Process and system memory in MB."""

    process_rss_mb: float
    system_total_mb: float
    system_available_mb: float


class LoadedModelInfo(msgspec.Struct, kw_only=True):
    """A loaded variant."""

    model_type: str
    variant: str
    device: str
    engine: str


class JobsHealth(msgspec.Struct, kw_only=True):
    """The job backend and whether it answers."""

    backend: str
    ok: bool
    detail: str | None = None


class Health(msgspec.Struct, kw_only=True):
    """Liveness and resources."""

    status: str
    version: str
    uptime_s: float
    device: DeviceInfo
    memory: MemoryInfo
    models_loaded: list[LoadedModelInfo]
    jobs: JobsHealth
