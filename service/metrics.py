"""Prometheus metrics for ``GET /metrics``.

Three sources feed them:

- an ASGI middleware: requests and latency per route template (never the raw path) and status;
- the pool's observer (:class:`engines.pool.PoolObserver`): each core forward's batch size and
  image count, each model load and its duration;
- :meth:`Metrics.refresh`, before each scrape (and every few seconds with several worker
  processes): loaded models and their memory, requests in flight per model, the SAM3 cache's
  hits and misses, jobs by status.

With ``PROMETHEUS_MULTIPROC_DIR`` set (uvicorn with several workers; prometheus-client reads it
when first imported, so set it before the server starts and empty it between runs) every
process writes its values there and a scrape of any process reports them all: counters and
histograms summed, per-process gauges labelled by ``pid`` (dead processes dropped).

Labels are model types, variants, engines, devices, route templates, methods and statuses:
never a key, a raw path or anything from a request body.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from engines.errors import VisionError
from engines.pool import ModelPool, PoolObserver
from service.jobs.base import JobBackend

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "<unmatched>"
# The text format every Prometheus reads (Litestar adds the charset).
CONTENT_TYPE = "text/plain; version=0.0.4"
JOB_STATUSES = ("pending", "running", "completed", "failed")
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LOAD_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def multiproc_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set: metrics are shared between worker processes."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass
class _CacheSeen:
    """The cache counters of one loaded pipeline at the last refresh (to add the difference)."""

    pipeline_id: int
    hits: int
    misses: int


@dataclass
class Metrics:
    """The app's metrics, in a registry of their own (several apps may live in one process).

    Args:
        pool: The model pool watched (its observer is set here).
        jobs: The job backend counted.
    """

    pool: ModelPool
    jobs: JobBackend
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _shown: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)
    _cache_seen: dict[tuple[str, str], _CacheSeen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # no *_created series (one per label set, of no use to dashboards); process-wide
        disable_created_metrics()
        r = self.registry
        self.requests = Counter(
            "vision_api_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "vision_api_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "vision_api_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.images = Counter(
            "vision_api_images_processed",
            "Images through a model's core forward.",
            ["model", "variant"],
            registry=r,
        )
        self.batch_size = Histogram(
            "vision_api_batch_size",
            "Images per core forward (dynamic batching).",
            ["model", "variant"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "vision_api_model_loads",
            "Models loaded (and warmed up).",
            ["model", "variant", "engine"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "vision_api_model_load_seconds",
            "Time to load and warm up a model.",
            ["model", "variant", "engine"],
            buckets=_LOAD_BUCKETS_S,
            registry=r,
        )
        self.loaded = Gauge(
            "vision_api_model_loaded",
            "1 for each loaded model (0 once unloaded).",
            ["model", "variant", "device", "engine"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.memory_mb = Gauge(
            "vision_api_model_memory_mb",
            "Weights' memory of each loaded model, in MiB.",
            ["model", "variant", "device", "engine"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.in_flight = Gauge(
            "vision_api_model_requests_in_flight",
            "Inference requests admitted on a model and not yet answered (its queue depth; "
            "max_in_flight_per_model bounds it).",
            ["model", "variant"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_hits = Counter(
            "vision_api_cache_hits",
            "Lookups answered from a model's cache (SAM3 image embeddings).",
            ["model", "variant"],
            registry=r,
        )
        self.cache_misses = Counter(
            "vision_api_cache_misses",
            "Lookups a model's cache could not answer.",
            ["model", "variant"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "vision_api_cache_bytes",
            "Bytes a model's cache holds.",
            ["model", "variant"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.jobs_by_status = Gauge(
            "vision_api_jobs",
            "Jobs retained, by status (the job store's count).",
            ["status"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.job_store_up = Gauge(
            "vision_api_job_store_up",
            "1 when the job store answered the last count, else 0.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.pool.observer = PoolObserver(on_batch=self._on_batch, on_load=self._on_load)

    # -- events ---------------------------------------------------------------------------
    def _on_batch(self, model_type: str, variant: str, size: int) -> None:
        self.batch_size.labels(model_type, variant).observe(size)
        self.images.labels(model_type, variant).inc(size)

    def _on_load(self, model_type: str, variant: str, engine: str, seconds: float) -> None:
        self.loads.labels(model_type, variant, engine).inc()
        self.load_seconds.labels(model_type, variant, engine).observe(seconds)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting requests and timing them by route template and status."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500  # unless a response starts

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            self.http_in_flight.inc()
            try:
                await app(scope, receive, send_and_note)
            finally:
                self.http_in_flight.dec()
                route = scope.get("path_template") or UNMATCHED_ROUTE
                method = str(scope.get("method", ""))
                self.requests.labels(method, route, str(status)).inc()
                self.latency.labels(method, route).observe(time.perf_counter() - started)

        return middleware

    # -- state ----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Set the state gauges from the pool and the job store, as they are now."""
        models = self.pool.loaded()
        self._show(
            "loaded",
            {(m.model_type, m.variant, m.device, m.engine): 1.0 for m in models},
            self.loaded,
        )
        self._show(
            "memory",
            {(m.model_type, m.variant, m.device, m.engine): m.memory_mb for m in models},
            self.memory_mb,
        )
        self._show(
            "in_flight",
            {(m.model_type, m.variant): float(m.in_flight) for m in models},
            self.in_flight,
        )
        cache_bytes: dict[tuple[str, ...], float] = {}
        for m in models:
            stats = m.pipeline.cache_stats()
            if stats is None:
                continue
            key = (m.model_type, m.variant)
            cache_bytes[key] = float(stats.bytes)
            seen = self._cache_seen.get(key)
            if seen is None or seen.pipeline_id != id(m.pipeline):  # new (or reloaded) model
                seen = _CacheSeen(id(m.pipeline), 0, 0)
            self.cache_hits.labels(*key).inc(max(0, stats.hits - seen.hits))
            self.cache_misses.labels(*key).inc(max(0, stats.misses - seen.misses))
            self._cache_seen[key] = _CacheSeen(id(m.pipeline), stats.hits, stats.misses)
        self._show("cache_bytes", cache_bytes, self.cache_bytes)
        await self._refresh_jobs()

    async def _refresh_jobs(self) -> None:
        try:
            counts = await self.jobs.counts()
        except VisionError:  # the store is unreachable (its backend logged why)
            self.job_store_up.set(0)
            return
        self.job_store_up.set(1)
        for status in JOB_STATUSES:
            self.jobs_by_status.labels(status).set(counts.get(status, 0))

    def _show(self, name: str, values: dict[tuple[str, ...], float], gauge: Gauge) -> None:
        """Set ``values``; label sets shown before and gone now go to 0 (a model unloaded)."""
        shown = self._shown.setdefault(name, set())
        for labels in shown - values.keys():
            gauge.labels(*labels).set(0)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        shown |= values.keys()

    async def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        await self.refresh()
        registry = self.registry
        if multiproc_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE

    @staticmethod
    def process_exited() -> None:
        """Drop this process's live gauges from the shared directory (at shutdown)."""
        if multiproc_dir():
            multiprocess.mark_process_dead(os.getpid())
