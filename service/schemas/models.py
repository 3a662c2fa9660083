"""Model management: load, unload, status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from engines.base import CacheStats


class ModelLoadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Load a variant on a device and engine."""

    model_type: Annotated[
        str, Meta(description="sam3, grounding-dino, depth-anything or dinov3 (or an alias).")
    ]
    variant: Annotated[
        str | None, Meta(description="Checkpoint variant; the model's default when omitted.")
    ] = None
    device: Annotated[
        str | None,
        Meta(description="cpu, cuda or cuda:N; the server's default device when omitted."),
    ] = None
    engine: Annotated[
        Literal["auto", "onnx", "torch"] | None,
        Meta(
            description="auto: ONNX Runtime when a matching exported artifact exists, else "
            "torch; onnx / torch force one. The server's setting when omitted."
        ),
    ] = None


class ModelUnloadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Unload one variant, or every loaded variant of the type when ``variant`` is omitted."""

    model_type: Annotated[
        str, Meta(description="sam3, grounding-dino, depth-anything or dinov3 (or an alias).")
    ]
    variant: Annotated[
        str | None,
        Meta(description="The variant to unload; every loaded variant of the type when omitted."),
    ] = None


class ModelStatus(msgspec.Struct, kw_only=True):
    """One known variant; fields that only make sense when loaded are null otherwise."""

    model_type: str
    variant: str
    default: bool
    source: str
    license: str
    loaded: bool
    device: str | None
    engine: str | None
    dtype: str | None
    dtype_reason: Annotated[
        str | None, Meta(description="Why this dtype or ONNX precision was chosen.")
    ] = None
    memory_mb: float | None
    loaded_at: datetime | None
    last_used_at: datetime | None
    requests: int
    fallback_reason: str | None
    placement: dict[str, str] | None = None
    cache: CacheStats | None = None
    batch_sizes: Annotated[
        dict[str, int] | None,
        Meta(description="Forwards run since loading, by batch size (images in one forward)."),
    ] = None


class ModelStatusList(msgspec.Struct, kw_only=True):
    """Every known variant."""

    models: list[ModelStatus]


class ModelRef(msgspec.Struct, kw_only=True):
    """A (model type, variant) pair."""

    model_type: str
    variant: str


class UnloadResult(msgspec.Struct, kw_only=True):
    """What was unloaded."""

    unloaded: list[ModelRef]
