"""The model pool: which variants are resident where, and the threads that run them.

The pool owns residency (lazy load, load once under concurrency, unload that waits for
in-flight requests) and execution: pre- and post-processing run on a CPU thread pool, core
forwards on a dedicated compute executor so the event loop stays free and the cores are never
oversubscribed by two forwards at once. *How* a variant is loaded (runtime, providers,
precision, warm-up) is :mod:`engines.loading`'s. Batching and caching hang off :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import msgspec
from PIL import Image

from engines.base import (
    CacheStats,
    DeferredImage,
    Family,
    ImageHandle,
    Pipeline,
    Prepared,
    VariantSpec,
)
from engines.batching import Batcher, BatchLimits, Forward, gather_list
from engines.budget import Resident, plan_room
from engines.checkpoints import weights_mb
from engines.devices import resolve_device
from engines.errors import (
    InferenceError,
    InvalidInputError,
    ModelNotLoadedError,
    NotFoundError,
    UnavailableError,
    VisionError,
)
from engines.loading import LoaderConfig, ModelLoader
from engines.memory import keep_freed_memory, release_freed_memory
from engines.registry import FamilyRegistry, VariantTable
from engines.threads import init_compute_thread, init_helper_thread, torch_threads

log = logging.getLogger(__name__)
T = TypeVar("T")
# What the pool takes as one image: pixels, a family's cached image, or bytes to decode.
PoolImage = Image.Image | ImageHandle | DeferredImage


@dataclass
class PoolConfig:
    """How the pool loads and runs models.

    Attributes:
        device: Default device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        dtype: Default dtype (``auto`` = float16 on CUDA, float32 on CPU).
        engine: Default engine (``auto``, ``torch``, ``onnx``).
        torch_threads: Intra-op threads for torch; 0 means the machine's cores.
        lazy_loading: Load on first use; when off, inference on an unloaded model is a 409.
        max_batch_size: Most images in one core forward; None picks the family's default for
            the device (``Family.max_batch_size``).
        max_batch_delay_ms: How long the oldest queued image may wait for its batch to fill;
            None: 0 on CPU (batches form while the previous forward runs), 2 ms on CUDA.
        batch_limits: Per model type, ``(max_batch_size, max_batch_delay_ms)`` overriding the
            two above (None in either place: not overridden).
        compute_workers: Forwards that may run at once in this process.
        keep_freed_memory: Keep freed large blocks in glibc's heap for the next forward
            (process-wide, set when the pool is created; :mod:`engines.memory`).
        memory_budget_mb: Most megabytes of weights resident per device (None: no limit).
        min_residency_s: A model loaded more recently than this is not unloaded to make room.
        hf_token: Token for gated Hugging Face repos.
        artifacts_dir: Where exported ONNX artifacts live.
        variants: Per model type, the variants and the default one.
        image_cache_mb: Per-image cache budget of families that keep one (SAM3's image
            embeddings): 0 (the default here) keeps none, None the family's default for the
            device. The server's settings turn it on.
        image_cache_ttl_s: Seconds an unused entry of that cache is kept.
        uint8_resize: Resize images as 8-bit pixels where a family's reference resizes float
            ones (``LoadRequest.uint8_resize``).
        max_in_flight_per_model: Requests one loaded model takes at once; beyond it
            :meth:`ModelPool.run` refuses at once (503) rather than queueing without bound.
        task_budgets: ``"<model_type>/<task>"`` → device kind (``cpu``, ``cuda``) → the most
            work one request of that task may ask of one forward, in the family's units
            (``Family.check_task``); absent: no limit beyond the request schema's.
    """

    device: str = "auto"
    dtype: str = "auto"
    engine: str = "auto"
    torch_threads: int = 0
    lazy_loading: bool = True
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    batch_limits: dict[str, tuple[int | None, float | None]] = field(default_factory=dict)
    compute_workers: int = 1
    keep_freed_memory: bool = True
    memory_budget_mb: float | None = None
    min_residency_s: float = 30.0
    hf_token: str | None = None
    artifacts_dir: Path | None = None
    onnx_precision: str = "auto"
    ort_providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    ort_optimization: str = "all"
    cpu_bf16: str = "auto"
    variants: dict[str, VariantTable] = field(default_factory=dict)
    image_cache_mb: float | None = 0.0
    image_cache_ttl_s: float = 600.0
    uint8_resize: bool = True
    max_in_flight_per_model: int | None = 64
    task_budgets: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class PoolObserver:
    """Callbacks the service hooks in to watch the pool (metrics); engines know none of them.

    Attributes:
        on_batch: ``(model_type, variant, images)`` after each core forward is formed.
        on_load: ``(model_type, variant, engine, seconds)`` after a model loaded and warmed up.
    """

    on_batch: Callable[[str, str, int], None] | None = None
    on_load: Callable[[str, str, str, float], None] | None = None


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
    dtype_reason: str | None = None
    last_used_at: datetime | None = None
    requests: int = 0
    fallback_reason: str | None = None
    placement: dict[str, str] = field(default_factory=dict)
    batcher: Batcher | None = None
    pinned: bool = False
    loaded_mono: float = field(default_factory=time.monotonic)
    last_used_mono: float = field(default_factory=time.monotonic)
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
                cpu_bf16=config.cpu_bf16,
                image_cache_mb=config.image_cache_mb,
                image_cache_ttl_s=config.image_cache_ttl_s,
                uint8_resize=config.uint8_resize,
            )
        )
        if config.keep_freed_memory:
            keep_freed_memory()
        self.observer = PoolObserver()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._budget_lock = asyncio.Lock()
        self._forwards_running = 0  # on the compute executor, for _alone
        self._cpu = ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="cpu", initializer=init_helper_thread
        )
        self._compute = ThreadPoolExecutor(
            max_workers=config.compute_workers,
            thread_name_prefix="compute",
            initializer=init_compute_thread,
            initargs=(self._threads,),
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
        pinned: bool = False,
    ) -> LoadedModel:
        """Load a variant, or return it if it is already loaded the same way.

        Concurrent calls for the same variant load it once. A variant loaded on another device
        or engine is unloaded (after its in-flight requests) and loaded again. With a memory
        budget, least recently used models are unloaded first to make room.

        Args:
            model_type: A model type or alias.
            variant: A variant; the default when None.
            device: Overrides the configured device.
            engine: Overrides the configured engine.
            pinned: Never unload this model to make room (preloaded models).

        Raises:
            UnavailableError: The memory budget has no room for it now (503, Retry-After).
        """
        return await self.load_resolved(
            self.resolve(model_type, variant), device=device, engine=engine, pinned=pinned
        )

    async def load_resolved(
        self,
        model: ResolvedModel,
        *,
        device: str | None = None,
        engine: str | None = None,
        pinned: bool = False,
    ) -> LoadedModel:
        """:meth:`load` for an already resolved model."""
        target_device = resolve_device(device or self.config.device)
        wanted_engine = engine or self.config.engine
        async with self._locks.setdefault(model.key, asyncio.Lock()):
            current = self._models.get(model.key)
            if current is not None:
                if current.device == target_device and wanted_engine in ("auto", current.engine):
                    current.pinned = current.pinned or pinned
                    return current
                await self._release(current)
            family = self.registry.get(model.model_type)
            if self.config.memory_budget_mb is None:
                return await self._load_new(model, family, target_device, wanted_engine, pinned)
            async with self._budget_lock:  # one budget decision (and its load) at a time
                estimate = await self._run(self._cpu, self._estimate_mb, model.spec)
                await self._make_room(model, target_device, estimate)
                resident = await self._load_new(model, family, target_device, wanted_engine, pinned)
                try:
                    await self._make_room(model, target_device, resident.memory_mb)
                except UnavailableError:
                    await self._release(resident)
                    raise
                return resident

    async def _load_new(
        self,
        model: ResolvedModel,
        family: Family,
        target_device: str,
        wanted_engine: str,
        pinned: bool,
    ) -> LoadedModel:
        """Load, warm up and register a model (the caller holds the model's lock)."""
        started = time.perf_counter()
        loaded = await self._run(
            self._cpu,
            functools.partial(self.loader.load, warm=False),
            family,
            model.spec,
            target_device,
            wanted_engine,
        )
        try:
            loaded = await self._run(
                self._compute, self.loader.warm_up, family, loaded.request, loaded
            )
        except BaseException:
            await self._run(self._cpu, loaded.pipeline.close)
            raise
        resident = LoadedModel(
            model_type=model.model_type,
            variant=model.spec.name,
            spec=model.spec,
            pipeline=loaded.pipeline,
            device=target_device,
            engine=loaded.engine,
            dtype=loaded.dtype,
            dtype_reason=loaded.dtype_reason,
            memory_mb=loaded.memory_mb,
            loaded_at=datetime.now(UTC),
            fallback_reason=loaded.fallback_reason,
            placement=loaded.placement,
            pinned=pinned,
        )
        resident.batcher = Batcher(
            forward=loaded.pipeline.forward,
            run=functools.partial(self._forward, resident),
            limits=self.batch_limits(family, target_device),
            on_batch=functools.partial(self._batch_formed, resident),
        )
        self._models[model.key] = resident
        if self.observer.on_load is not None:
            on_load = self.observer.on_load
            on_load(model.model_type, model.spec.name, loaded.engine, time.perf_counter() - started)
        return resident

    def _batch_formed(self, model: LoadedModel, size: int) -> None:
        if self.observer.on_batch is not None:
            self.observer.on_batch(model.model_type, model.variant, size)

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

    async def check_options(self, resolved: ResolvedModel, options: Any) -> None:
        """The family's checkpoint-level checks of ``options`` (see ``Family.check_options``).

        Only :class:`~engines.errors.InvalidInputError` comes out: a checkpoint that cannot be
        read now is the job's to report when it runs.
        """
        family = self.registry.get(resolved.model_type)
        try:
            await self._run(
                self._cpu, family.check_options, resolved.spec, self.config.hf_token, options
            )
        except InvalidInputError:
            raise
        except Exception:
            log.info("could not check %s's options before running", resolved.label, exc_info=True)

    @staticmethod
    def _estimate_mb(spec: VariantSpec) -> float:
        """The weights a variant will take, from its files when they are on this disk.

        Hub checkpoints not yet downloaded count 0 here (nothing is fetched just to measure);
        the budget is checked again with the loaded model's real size.
        """
        path = Path(spec.source).expanduser()
        return weights_mb(path) if path.is_dir() else 0.0

    async def _make_room(self, model: ResolvedModel, device: str, needed_mb: float) -> None:
        """Unload least recently used models on ``device`` until ``needed_mb`` more fits."""
        assert self.config.memory_budget_mb is not None
        now = time.monotonic()
        residents = [
            Resident(
                key=key,
                label=f"{m.model_type}/{m.variant}",
                memory_mb=m.memory_mb,
                busy=m.in_flight > 0,
                pinned=m.pinned,
                resident_s=now - m.loaded_mono,
                idle_s=now - m.last_used_mono,
            )
            for key, m in self._models.items()
            if m.device == device and key != model.key
        ]
        for key in plan_room(
            model.label,
            needed_mb,
            self.config.memory_budget_mb,
            residents,
            self.config.min_residency_s,
        ):
            victim = self._models[key]  # type: ignore[index]
            log.info("unloading %s/%s to make room for %s", *key, model.label)  # type: ignore[misc]
            await self._release(victim)

    def batch_limits(self, family: Family, device: str) -> BatchLimits:
        """Batch size and delay for ``family`` on ``device``: per model, global, then default."""
        size, delay_ms = self.config.batch_limits.get(family.name, (None, None))
        cuda = device.startswith("cuda")
        if size is None:
            size = self.config.max_batch_size
        if size is None:
            size = family.max_batch_size["cuda" if cuda else "cpu"]
        if delay_ms is None:
            delay_ms = self.config.max_batch_delay_ms
        if delay_ms is None:
            delay_ms = 2.0 if cuda else 0.0
        return BatchLimits(max_batch_size=size, max_delay_s=delay_ms / 1e3)

    async def _forward(
        self, model: LoadedModel, forward: Forward, batch: list[Prepared], options: Any
    ) -> list[Any]:
        self._forwards_running += 1
        try:
            return await self._guarded(model, self._compute, forward, batch, options)
        finally:
            self._forwards_running -= 1

    async def _release(self, model: LoadedModel) -> None:
        await model.idle.wait()
        if model.batcher is not None:
            await model.batcher.close()
        self._models.pop((model.model_type, model.variant), None)
        await self._run(self._cpu, model.pipeline.close)
        await self._run(self._cpu, release_freed_memory)
        log.info("unloaded %s/%s", model.model_type, model.variant)

    def is_loaded(self, resolved: ResolvedModel) -> bool:
        """Whether ``resolved`` is loaded now."""
        return resolved.key in self._models

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
        images: Sequence[PoolImage],
        options: Any,
    ) -> InferenceOutcome:
        """Resolve the model, then :meth:`run`."""
        return await self.run(self.resolve(model_type, variant), images, options)

    async def run(
        self,
        resolved: ResolvedModel,
        images: Sequence[PoolImage],
        options: Any,
    ) -> InferenceOutcome:
        """Pre-process, run and post-process ``images``; results in input order.

        Loads the model first when lazy loading is on. Image handles go only to families that
        accept them (``Family.accepts_image_ids``). Deferred images are decoded on the thread
        that pre-processes them; the timings then have ``decode`` too.

        Raises:
            InvalidInputError: An image handle for a family that takes only pixels.
            ModelNotLoadedError: Lazy loading is off and the model is not loaded.
            UnavailableError: ``max_in_flight_per_model`` requests are already running on the
                model (503 with Retry-After: bounded work instead of an unbounded queue).
        """
        if any(isinstance(i, ImageHandle) for i in images):
            if not self.registry.get(resolved.model_type).accepts_image_ids:
                takers = ", ".join(f.name for f in self.registry if f.accepts_image_ids)
                raise InvalidInputError(
                    f"{resolved.model_type} takes images, not image_id items; only "
                    f"{takers or 'no model'} accepts them."
                )
        async with self._admitted(resolved) as model:
            return await self._infer_loaded(model, images, options)

    async def run_task(
        self, resolved: ResolvedModel, task: str, images: Sequence[Image.Image], options: Any
    ) -> InferenceOutcome:
        """Run the whole-request :class:`~engines.base.Task` ``task`` on ``images``.

        Admission (lazy loading, the in-flight limit) as :meth:`run`; the task's budget is
        checked on the device the model is loaded on. The outcome has one result.

        Raises:
            InvalidInputError: The variant has no such task.
            PayloadTooLargeError: The request exceeds the task's budget on that device.
        """
        async with self._admitted(resolved) as model:
            self._check_task(resolved, task, len(images), options, model.device)
            runner = model.pipeline.task(task)
            started = time.perf_counter()
            prepared = await self._guarded(model, self._cpu, runner.prepare, images, options)
            t_pre = time.perf_counter()
            raw = await self._forward(model, runner.forward, prepared, options)
            t_inf = time.perf_counter()
            result = await self._guarded(
                model, self._cpu, runner.postprocess, raw, prepared, options
            )
            t_post = time.perf_counter()
            self._used(model)
            timings = {
                "preprocess": (t_pre - started) * 1e3,
                "inference": (t_inf - t_pre) * 1e3,
                "postprocess": (t_post - t_inf) * 1e3,
            }
            return InferenceOutcome(model, [result], timings)

    def check_task(self, resolved: ResolvedModel, task: str, images: int, options: Any) -> None:
        """The task's budget check before anything runs (job submission, request intake).

        Uses the device the model is loaded on, else the one it would be loaded on.

        Raises:
            PayloadTooLargeError: The request exceeds the task's budget on that device.
        """
        loaded = self._models.get(resolved.key)
        device = loaded.device if loaded is not None else resolve_device(self.config.device)
        self._check_task(resolved, task, images, options, device)

    def _check_task(
        self, resolved: ResolvedModel, task: str, images: int, options: Any, device: str
    ) -> None:
        kind = "cuda" if device.startswith("cuda") else "cpu"
        budget = self.config.task_budgets.get(f"{resolved.model_type}/{task}", {}).get(kind)
        family = self.registry.get(resolved.model_type)
        family.check_task(task, images, options, kind, budget)

    @contextlib.asynccontextmanager
    async def _admitted(self, resolved: ResolvedModel) -> AsyncIterator[LoadedModel]:
        """The loaded model, counted in flight for the duration (503 beyond the limit)."""
        model = self._models.get(resolved.key)
        if model is None:
            if not self.config.lazy_loading:
                raise ModelNotLoadedError(
                    f"Model {resolved.model_type} not loaded. POST /models/load first."
                )
            model = await self.load_resolved(resolved)
        limit = self.config.max_in_flight_per_model
        if limit is not None and model.in_flight >= limit:
            raise UnavailableError(
                f"{resolved.label} is busy: {model.in_flight} requests in flight (limit "
                f"{limit}, max_in_flight_per_model); retry shortly.",
                retry_after_s=1,
            )
        model.in_flight += 1
        model.idle.clear()
        try:
            yield model
        finally:
            model.in_flight -= 1
            if model.in_flight == 0:
                model.idle.set()

    def _alone(self, model: LoadedModel, images: int) -> bool:
        """Whether a request runs every step in one job on the compute thread.

        A single image while the model's compute thread is idle (no forward running or
        queued): nothing can share its forward, and each hop between threads costs a wake-up
        (~0.3 ms on a 2-core VM for a thread that slept through a forward; a request made
        four). Under load, for several images (which the helpers prepare side by side), and
        where a batch delay is set (its window is there to gather requests), requests go
        through the helpers and the batcher.
        """
        return (
            images == 1
            and self._forwards_running == 0
            and model.batcher is not None
            and model.batcher.idle
            and model.batcher.limits.max_delay_s == 0
        )

    @staticmethod
    def _used(model: LoadedModel) -> None:
        model.requests += 1
        model.last_used_at = datetime.now(UTC)
        model.last_used_mono = time.monotonic()

    async def _infer_loaded(
        self, model: LoadedModel, images: Sequence[PoolImage], options: Any
    ) -> InferenceOutcome:
        if self._alone(model, len(images)):
            return await self._infer_alone(model, images[0], options)
        pipeline = model.pipeline
        started = time.perf_counter()
        prepared = await gather_list(
            [self._guarded(model, self._cpu, prepare, pipeline, im, options) for im in images]
        )
        t_pre = time.perf_counter()
        assert model.batcher is not None
        raw = await model.batcher.submit(prepared, options)
        t_inf = time.perf_counter()
        results = await gather_list(
            [
                self._guarded(model, self._cpu, pipeline.postprocess, r, p, options)
                for r, p in zip(raw, prepared, strict=True)
            ]
        )
        t_post = time.perf_counter()
        self._used(model)
        # Deferred images decoded side by side inside the pre-processing: the longest decode
        # is what the request waited for.
        decode = max((i.decode_ms for i in images if isinstance(i, DeferredImage)), default=0.0)
        timings = {
            "decode": decode,
            "preprocess": (t_pre - started) * 1e3 - decode,
            "inference": (t_inf - t_pre) * 1e3,
            "postprocess": (t_post - t_inf) * 1e3,
        }
        return InferenceOutcome(model, results, timings)

    async def _infer_alone(
        self, model: LoadedModel, image: PoolImage, options: Any
    ) -> InferenceOutcome:
        """One image on an idle model: all its steps in one job on the compute thread.

        It holds the batcher's turn (counted as a forward of one image, like the batcher's):
        requests that arrive meanwhile queue and share the next forward.
        """
        assert model.batcher is not None
        async with model.batcher.alone():
            self._forwards_running += 1
            try:
                done = await self._guarded(
                    model, self._compute, self._steps_alone, model, image, options
                )
            finally:
                self._forwards_running -= 1
        if done.result is None:  # a request queued meanwhile: post-process on a helper
            started = time.perf_counter()
            done.result = await self._guarded(
                model, self._cpu, model.pipeline.postprocess, done.raw, done.prepared, options
            )
            done.timings["postprocess"] = (time.perf_counter() - started) * 1e3
        self._used(model)
        return InferenceOutcome(model, [done.result], done.timings)

    @staticmethod
    def _steps_alone(model: LoadedModel, image: PoolImage, options: Any) -> _Alone:
        """The steps of :meth:`_infer_alone`, on the compute thread.

        A torch model's pre- and post-processing use the compute thread's OpenMP team (its
        resizes run on every core); any other engine's run single-threaded in torch, as on a
        helper: ONNX Runtime's forward has threads of its own, and torch's team, still spinning
        after a resize, slowed it (DINOv3: 27.7 -> 33.7 ms). When a request has queued during
        the forward, the result is left to a helper, so the queued forward does not wait for
        the post-processing.
        """
        pipeline = model.pipeline
        threads = torch_threads(1) if model.engine != "torch" else contextlib.nullcontext()
        with threads:
            started = time.perf_counter()
            if isinstance(image, DeferredImage):
                image = _step(decode, pipeline, image, options)
            t_decode = time.perf_counter()
            prepared = _step(pipeline.prepare, image, options)
            t_pre = time.perf_counter()
            raw = _step(pipeline.forward, [prepared], options)[0]
            t_inf = time.perf_counter()
            done = _Alone(raw, prepared)
            done.timings = {
                "decode": (t_decode - started) * 1e3,
                "preprocess": (t_pre - t_decode) * 1e3,
                "inference": (t_inf - t_pre) * 1e3,
            }
            assert model.batcher is not None
            if model.batcher.pending:
                return done
            done.result = _step(pipeline.postprocess, raw, prepared, options)
        done.timings["postprocess"] = (time.perf_counter() - t_inf) * 1e3
        return done

    async def _guarded(
        self, model: LoadedModel, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any
    ) -> T:
        """Run one step of a request; unexpected errors become an error naming the model."""
        try:
            return await self._run(executor, fn, *args)
        except VisionError:
            raise
        except Exception as failure:
            step = getattr(fn, "__name__", "a step")
            exc: BaseException = failure
            if isinstance(failure, _StepFailed):  # one of several steps in one job
                step, exc = failure.step, failure.error
                if isinstance(exc, VisionError):
                    raise exc from None
            label = f"{model.model_type}/{model.variant}"
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                raise UnavailableError(
                    f"Out of memory running {label}; retry later or send fewer images.",
                    retry_after_s=5,
                ) from None
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


def decode(pipeline: Pipeline[Any], image: DeferredImage, options: Any) -> Image.Image:
    """A deferred image's pixels (a step of its own in error messages).

    The decoder learns what the pipeline resizes the image to (``Pipeline.decode_size``).
    """
    return image.load(functools.partial(pipeline.decode_size, options=options))


def prepare(pipeline: Pipeline[Any], image: PoolImage, options: Any) -> Prepared:
    """``pipeline.prepare`` of an image, decoded first where it was deferred."""
    if isinstance(image, DeferredImage):
        image = decode(pipeline, image, options)
    # An ImageHandle reaches only families that accept them (checked in ModelPool.run).
    return pipeline.prepare(cast(Image.Image, image), options)


@dataclass
class _Alone:
    """What the compute-thread job of an image run alone hands back."""

    raw: Any
    prepared: Prepared
    result: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _StepFailed(Exception):
    """A step of a multi-step job failed: which one, and its error (``__cause__`` too)."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {error!r}")
        self.step = step
        self.error = error


def _step(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, its failure wrapped in :class:`_StepFailed` naming ``fn``."""
    try:
        return fn(*args)
    except Exception as exc:
        raise _StepFailed(getattr(fn, "__name__", "a step"), exc) from exc


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
        "dtype_reason": None,
        "memory_mb": None,
        "loaded_at": None,
        "last_used_at": None,
        "requests": 0,
        "fallback_reason": None,
        "placement": None,
        "cache": None,
        "batch_sizes": None,
    }
    if model is not None:
        entry.update(
            device=model.device,
            engine=model.engine,
            dtype=model.dtype,
            dtype_reason=model.dtype_reason,
            memory_mb=model.memory_mb,
            loaded_at=model.loaded_at,
            last_used_at=model.last_used_at,
            requests=model.requests,
            fallback_reason=model.fallback_reason,
            placement=model.placement,
            cache=_as_dict(model.pipeline.cache_stats()),
            batch_sizes={str(k): v for k, v in sorted(model.batcher.sizes.items())}
            if model.batcher is not None
            else None,
        )
    return entry


def _as_dict(stats: CacheStats | None) -> dict[str, int] | None:
    return None if stats is None else msgspec.structs.asdict(stats)
