"""The model pool: which variants are loaded where, and the threads that run them.

The pool owns the lifecycle (lazy load, load once under concurrency, unload that waits for
in-flight requests) and the execution: pre- and post-processing run on a CPU thread pool,
core forwards on a dedicated compute executor so the event loop stays free and the cores are
never oversubscribed by two forwards at once. Batching and caching will hang off ``infer``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from engines.base import Family, LoadRequest, Pipeline, VariantSpec, batches
from engines.devices import resolve_device, resolve_dtype
from engines.errors import (
    InferenceError,
    ModelNotLoadedError,
    NotFoundError,
    UnavailableError,
    VisionError,
)
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


@dataclass
class Outcome:
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
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._cpu = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="cpu")
        self._compute = ThreadPoolExecutor(
            max_workers=config.compute_workers, thread_name_prefix="compute"
        )

    # -- naming ---------------------------------------------------------------------------
    def resolve(self, model_type: str, variant: str | None) -> tuple[str, VariantSpec]:
        """Canonical model type and the variant's spec (the default when ``variant`` is None).

        Raises:
            NotFoundError: Unknown model type or variant.
        """
        name = self.registry.canonical(model_type)
        table = self.tables[name]
        key = variant or table.default_variant
        try:
            return name, table.variants[key]
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
        name, spec = self.resolve(model_type, variant)
        target_device = resolve_device(device or self.config.device)
        wanted_engine = engine or self.config.engine
        key = (name, spec.name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            current = self._models.get(key)
            if current is not None:
                if current.device == target_device and wanted_engine in ("auto", current.engine):
                    return current
                await self._release(current)
            loaded = await self._run(
                self._cpu, self._load_sync, name, spec, target_device, wanted_engine
            )
            self._models[key] = loaded
            return loaded

    def _load_sync(self, name: str, spec: VariantSpec, device: str, engine: str) -> LoadedModel:
        if engine not in ("auto", "torch", "onnx"):
            raise NotFoundError(f"Unknown engine {engine!r}: use auto, onnx or torch.")
        family = self.registry.get(name)
        dtype = resolve_dtype(self.config.dtype, device)
        request = LoadRequest(spec, device, dtype, self._threads, self.config.hf_token)
        started = time.perf_counter()
        fallback_reason = None
        try:
            pipeline = None
            if engine in ("auto", "onnx"):
                pipeline, fallback_reason = self._load_onnx(
                    family, request, explicit=engine == "onnx"
                )
            if pipeline is None:
                pipeline = family.load_torch(request)
            # ONNX Runtime reaches its steady speed only after a couple of runs.
            for _ in range(1 if pipeline.core.engine == "torch" else 2):
                pipeline.warmup()
        except VisionError:
            raise
        except MemoryError:
            raise UnavailableError(
                f"Not enough memory to load {name}/{spec.name}; unload other models first.",
                retry_after_s=30,
            ) from None
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise UnavailableError(
                    f"Not enough GPU memory to load {name}/{spec.name}; unload other models "
                    "or use a smaller variant.",
                    retry_after_s=30,
                ) from None
            log.exception("loading %s/%s from %s failed", name, spec.name, spec.source)
            raise InferenceError(
                f"Could not load {name}/{spec.name} from {spec.source}: {type(exc).__name__}: {exc}"
            ) from exc
        log.info(
            "loaded %s/%s on %s (%s, %s) in %.1f s",
            name,
            spec.name,
            device,
            pipeline.core.engine,
            dtype,
            time.perf_counter() - started,
        )
        return LoadedModel(
            model_type=name,
            variant=spec.name,
            spec=spec,
            pipeline=pipeline,
            device=device,
            engine=pipeline.core.engine,
            dtype=dtype if pipeline.core.engine == "torch" else self.config.onnx_precision,
            memory_mb=round(pipeline.core.memory_bytes() / 2**20, 1),
            loaded_at=datetime.now(UTC),
            fallback_reason=fallback_reason,
            placement=_placement(family, pipeline.core),
        )

    def _load_onnx(
        self, family: Family, request: LoadRequest, *, explicit: bool
    ) -> tuple[Pipeline[Any] | None, str | None]:
        """The pipeline on ONNX Runtime, or ``(None, reason)`` to fall back to torch.

        A graph the artifact lacks runs on torch (a hybrid core); a session that fails to build
        falls back to torch entirely, with the reason logged and reported in the status.
        """
        from engines.artifacts import find_artifact, weights_sha256
        from engines.checkpoints import resolve_checkpoint
        from engines.onnx_runtime import HybridCore, OrtCore, OrtOptions

        spec = request.spec
        if type(family).load_onnx is Family.load_onnx:
            reason = f"{family.name} has no ONNX Runtime support yet"
            if explicit:
                raise NotFoundError(f"{reason}; load it with engine 'torch'.")
            return None, reason
        manifest, directory, reason = find_artifact(
            self.config.artifacts_dir, family.name, spec.name, None, self.config.onnx_precision
        )
        if manifest is not None:
            weights = weights_sha256(resolve_checkpoint(spec.source, request.hf_token))
            if manifest.weights_sha256 != weights:
                manifest, reason = (
                    None,
                    (
                        f"the artifact in {directory} was exported from other weights "
                        f"({manifest.weights_sha256[:12]} != {weights[:12]}); export it again"
                    ),
                )
        if manifest is None:
            if explicit:
                raise NotFoundError(
                    f"No usable ONNX artifact for {family.name}/{spec.name}: {reason}. Create one "
                    f"with `vision-api export {family.name} --variant {spec.name}`, or load with "
                    "engine 'torch'."
                )
            return None, reason
        try:
            options = OrtOptions(
                device=request.device,
                providers=self.config.ort_providers,
                intra_op_threads=self._threads,
                optimization=self.config.ort_optimization,
                trt_cache_dir=(self.config.artifacts_dir or Path("artifacts")) / ".trt-cache",
            )
            ort_core = OrtCore(directory, manifest, options)
            missing = [g for g in family.graphs if g not in ort_core.sessions]
            core: Any = ort_core
            reason = None
            if missing:
                torch_core = family.load_torch(request).core
                core = HybridCore(
                    {g: ort_core if g in ort_core.sessions else torch_core for g in family.graphs}
                )
                reason = f"graphs {', '.join(missing)} not in the artifact: they run on torch"
            return family.load_onnx(request, core), reason
        except VisionError:
            raise
        except Exception as exc:
            log.warning(
                "ONNX Runtime failed for %s/%s, falling back to torch: %s",
                family.name,
                spec.name,
                exc,
            )
            return None, f"ONNX Runtime failed: {type(exc).__name__}: {exc}"

    async def unload(self, model_type: str, variant: str | None = None) -> list[tuple[str, str]]:
        """Unload one variant, or every loaded variant of the type; returns what was unloaded."""
        if variant is None:
            name = self.registry.canonical(model_type)
            keys = [k for k in self._models if k[0] == name]
        else:
            name, spec = self.resolve(model_type, variant)
            keys = [(name, spec.name)]
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
    ) -> Outcome:
        """Pre-process, run and post-process ``images``; results in input order."""
        name, spec = self.resolve(model_type, variant)
        model = self._models.get((name, spec.name))
        if model is None:
            if not self.config.lazy_loading:
                raise ModelNotLoadedError(f"Model {name} not loaded. POST /models/load first.")
            model = await self.load(name, spec.name)
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
    ) -> Outcome:
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
        return Outcome(model, results, timings)

    async def _guarded(
        self, model: LoadedModel, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any
    ) -> T:
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
            log.exception("inference on %s failed", label)
            raise InferenceError(
                f"Inference with {label} failed: {type(exc).__name__}: {exc}"
            ) from exc

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

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
        )
    return entry


def _placement(family: Family, core: Any) -> dict[str, str]:
    """Which engine runs each of the family's graphs."""
    where = getattr(core, "where", None)
    return where() if callable(where) else {graph: core.engine for graph in family.graphs}
