"""The model pool: which variants are resident where, and the threads that run them.

The pool owns residency (lazy load, load once under concurrency, unload that waits for
in-flight requests) and execution: pre- and post-processing run on a CPU thread pool, core
forwards on a dedicated compute executor so the event loop stays free and the cores are never
oversubscribed by two forwards at once. *How* a variant is loaded (runtime, providers,
precision, warm-up) is :mod:`engines.loading`'s. Batching and caching hang off :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from PIL import Image

from engines.base import CacheStats, Pipeline, VariantSpec, batches
from engines.devices import resolve_device
from engines.errors import (
    InferenceError,
    ModelNotLoadedError,
    NotFoundError,
    UnavailableError,
    VisionError,
)
from engines.loading import LoaderConfig, ModelLoader
from engines.registry import FamilyRegistry, VariantTable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PoolConfig:
    """How the pool loads and runs models.

    Attributes:
        device: Default device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        dtype: Default dtype (``auto`` = float16 on CUDA, float32 on CPU).
        engine: Default engine (``auto``, ``torch``, ``onnx``).
        torch_threads: Intra-op threads for torch; 0 means the machine's cores.
        lazy_loading: Load on first use; when off, inference on an unloaded model is a 409.
        max_batch_size: Most images in one core forward.
        compute_workers: Forwards that may run at once in this process.
        hf_token: Token for gated Hugging Face repos.
        artifacts_dir: Where exported ONNX artifacts live.
        variants: Per model type, the variants and the default one.
    """

    device: str = "auto"
    dtype: str = "auto"
    engine: str = "auto"
    torch_threads: int = 0
    lazy_loading: bool = True
    max_batch_size: int = 8
    compute_workers: int = 1
    hf_token: str | None = None
    artifacts_dir: Path | None = None
    onnx_precision: str = "fp32"
    ort_providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    ort_optimization: str = "all"
    variants: dict[str, VariantTable] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A loaded variant and its bookkeeping."""

    model_type: str
    variant: str
    spec: VariantSpec
    pipeline: Pipeline[Any]
    device: str
    engine: str
    dtype: str
    memory_mb: float
    loaded_at: datetime
    last_used_at: datetime | None = None
    requests: int = 0
    fallback_reason: str | None = None
    placement: dict[str, str] = field(default_factory=dict)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class ResolvedModel(NamedTuple):
    """A request's model, resolved once: the canonical model type and the variant's spec."""

    model_type: str
    spec: VariantSpec

    @property
    def key(self) -> tuple[str, str]:
        """``(model type, variant)``: the pool's key."""
        return self.model_type, self.spec.name

    @property
    def label(self) -> str:
        """``model_type/variant``, as messages name it."""
        return f"{self.model_type}/{self.spec.name}"


@dataclass
class InferenceOutcome:
    """Results of one inference call, one per image in input order, and its timings."""

    model: LoadedModel
    results: list[dict[str, Any]]
    timings_ms: dict[str, float]


class ModelPool:
    """Loads, runs and unloads model variants.

    Args:
        registry: The model families.
        config: Defaults and variant tables.
    """

    def __init__(self, registry: FamilyRegistry, config: PoolConfig) -> None:
        self.registry = registry
        self.config = config
        self.tables = registry.variant_tables(config.variants)
        self._threads = config.torch_threads or os.cpu_count() or 1
        self.loader = ModelLoader(
            LoaderConfig(
                dtype=config.dtype,
                threads=self._threads,
                hf_token=config.hf_token,
                artifacts_dir=config.artifacts_dir,
                onnx_precision=config.onnx_precision,
                ort_providers=config.ort_providers,
                ort_optimization=config.ort_optimization,
            )
        )
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._cpu = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="cpu")
        self._compute = ThreadPoolExecutor(
            max_workers=config.compute_workers, thread_name_prefix="compute"
        )

    # -- naming ---------------------------------------------------------------------------
    def resolve(self, model_type: str, variant: str | None) -> ResolvedModel:
        """Canonical model type and the variant's spec (the default when ``variant`` is None).

        Raises:
            NotFoundError: Unknown model type or variant.
        """
        name = self.registry.canonical(model_type)
        table = self.tables[name]
        key = variant or table.default_variant
        try:
            return ResolvedModel(name, table.variants[key])
        except KeyError:
            raise NotFoundError(
                f"Unknown variant {key!r} of {name}; available: {', '.join(table.variants)}."
            ) from None

    # -- lifecycle ------------------------------------------------------------------------
    async def load(
        self,
        model_type: str,
        variant: str | None = None,
        *,
        device: str | None = None,
        engine: str | None = None,
    ) -> LoadedModel:
        """Load a variant, or return it if it is already loaded the same way.

        Concurrent calls for the same variant load it once. A variant loaded on another device
        or engine is unloaded (after its in-flight requests) and loaded again.
        """
        return await self.load_resolved(
            self.resolve(model_type, variant), device=device, engine=engine
        )

    async def load_resolved(
        self, model: ResolvedModel, *, device: str | None = None, engine: str | None = None
    ) -> LoadedModel:
        """:meth:`load` for an already resolved model."""
        target_device = resolve_device(device or self.config.device)
        wanted_engine = engine or self.config.engine
        async with self._locks.setdefault(model.key, asyncio.Lock()):
            current = self._models.get(model.key)
            if current is not None:
                if current.device == target_device and wanted_engine in ("auto", current.engine):
                    return current
                await self._release(current)
            family = self.registry.get(model.model_type)
            loaded = await self._run(
                self._cpu, self.loader.load, family, model.spec, target_device, wanted_engine
            )
            resident = LoadedModel(
                model_type=model.model_type,
                variant=model.spec.name,
                spec=model.spec,
                pipeline=loaded.pipeline,
                device=target_device,
                engine=loaded.engine,
                dtype=loaded.dtype,
                memory_mb=loaded.memory_mb,
                loaded_at=datetime.now(UTC),
                fallback_reason=loaded.fallback_reason,
                placement=loaded.placement,
            )
            self._models[model.key] = resident
            return resident

    async def unload(self, model_type: str, variant: str | None = None) -> list[tuple[str, str]]:
        """Unload one variant, or every loaded variant of the type; returns what was unloaded."""
        if variant is None:
            name = self.registry.canonical(model_type)
            keys = [k for k in self._models if k[0] == name]
        else:
            keys = [self.resolve(model_type, variant).key]
        unloaded = []
        for key in keys:
            async with self._locks.setdefault(key, asyncio.Lock()):
                model = self._models.get(key)
                if model is not None:
                    await self._release(model)
                    unloaded.append(key)
        return unloaded

    async def unload_all(self) -> list[tuple[str, str]]:
        """Unload every loaded variant."""
        unloaded = []
        for name, variant in list(self._models):
            unloaded += await self.unload(name, variant)
        return unloaded

    async def _release(self, model: LoadedModel) -> None:
        await model.idle.wait()
        self._models.pop((model.model_type, model.variant), None)
        await self._run(self._cpu, model.pipeline.core.close)
        log.info("unloaded %s/%s", model.model_type, model.variant)

    def loaded(self) -> list[LoadedModel]:
        """The loaded variants."""
        return list(self._models.values())

    def status(self) -> list[dict[str, Any]]:
        """One entry per known variant, loaded or not (``/models/status``)."""
        entries = []
        for name, table in self.tables.items():
            for spec in table.variants.values():
                model = self._models.get((name, spec.name))
                entries.append(_status_entry(name, spec, model, spec.name == table.default_variant))
        return entries

    # -- inference ------------------------------------------------------------------------
    async def infer(
        self,
        model_type: str,
        variant: str | None,
        images: Sequence[Image.Image],
        options: Any,
    ) -> InferenceOutcome:
        """Resolve the model, then :meth:`run`."""
        return await self.run(self.resolve(model_type, variant), images, options)

    async def run(
        self, resolved: ResolvedModel, images: Sequence[Image.Image], options: Any
    ) -> InferenceOutcome:
        """Pre-process, run and post-process ``images``; results in input order.

        Loads the model first when lazy loading is on.

        Raises:
            ModelNotLoadedError: Lazy loading is off and the model is not loaded.
        """
        model = self._models.get(resolved.key)
        if model is None:
            if not self.config.lazy_loading:
                raise ModelNotLoadedError(
                    f"Model {resolved.model_type} not loaded. POST /models/load first."
                )
            model = await self.load_resolved(resolved)
        model.in_flight += 1
        model.idle.clear()
        try:
            return await self._infer_loaded(model, images, options)
        finally:
            model.in_flight -= 1
            if model.in_flight == 0:
                model.idle.set()

    async def _infer_loaded(
        self, model: LoadedModel, images: Sequence[Image.Image], options: Any
    ) -> InferenceOutcome:
        pipeline = model.pipeline
        started = time.perf_counter()
        prepared = list(
            await asyncio.gather(
                *(self._guarded(model, self._cpu, pipeline.prepare, im, options) for im in images)
            )
        )
        t_pre = time.perf_counter()
        raw: list[Any] = [None] * len(prepared)
        for group in batches(prepared, self.config.max_batch_size):
            outputs = await self._guarded(
                model, self._compute, pipeline.forward, [prepared[i] for i in group], options
            )
            for i, out in zip(group, outputs, strict=True):
                raw[i] = out
        t_inf = time.perf_counter()
        results = list(
            await asyncio.gather(
                *(
                    self._guarded(model, self._cpu, pipeline.postprocess, r, p, options)
                    for r, p in zip(raw, prepared, strict=True)
                )
            )
        )
        t_post = time.perf_counter()
        model.requests += 1
        model.last_used_at = datetime.now(UTC)
        timings = {
            "preprocess": (t_pre - started) * 1e3,
            "inference": (t_inf - t_pre) * 1e3,
            "postprocess": (t_post - t_inf) * 1e3,
        }
        return InferenceOutcome(model, results, timings)

    async def _guarded(
        self, model: LoadedModel, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any
    ) -> T:
        """Run one step of a request; unexpected errors become an error naming the model."""
        try:
            return await self._run(executor, fn, *args)
        except VisionError:
            raise
        except Exception as exc:
            label = f"{model.model_type}/{model.variant}"
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                raise UnavailableError(
                    f"Out of memory running {label}; retry later or send fewer images.",
                    retry_after_s=5,
                ) from None
            step = getattr(fn, "__name__", "a step")
            log.exception("inference on %s failed in %s", label, step)
            raise InferenceError(
                f"Inference with {label} failed: {type(exc).__name__} in {step}; the server log "
                "has the details."
            ) from exc

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``executor``, in a copy of this task's context (request id...)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, context.run, fn, *args)

    async def close(self) -> None:
        """Unload everything and stop the threads."""
        await self.unload_all()
        self._cpu.shutdown(wait=False, cancel_futures=True)
        self._compute.shutdown(wait=False, cancel_futures=True)


def _status_entry(
    name: str, spec: VariantSpec, model: LoadedModel | None, is_default: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model_type": name,
        "variant": spec.name,
        "default": is_default,
        "source": spec.source,
        "license": spec.license,
        "loaded": model is not None,
        "device": None,
        "engine": None,
        "dtype": None,
        "memory_mb": None,
        "loaded_at": None,
        "last_used_at": None,
        "requests": 0,
        "fallback_reason": None,
        "placement": None,
        "cache": None,
    }
    if model is not None:
        entry.update(
            device=model.device,
            engine=model.engine,
            dtype=model.dtype,
            memory_mb=model.memory_mb,
            loaded_at=model.loaded_at,
            last_used_at=model.last_used_at,
            requests=model.requests,
            fallback_reason=model.fallback_reason,
            placement=model.placement,
            cache=_as_dict(model.pipeline.cache_stats()),
        )
    return entry


def _as_dict(stats: CacheStats | None) -> dict[str, int] | None:
    return None if stats is None else dataclasses.asdict(stats)
