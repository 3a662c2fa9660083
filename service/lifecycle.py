"""Start-up, readiness and graceful shutdown of the API process.

Start-up: the job backend starts, then the preloaded models (``runtime.preload``) load in a
task of their own, so that ``/health/live`` answers meanwhile; ``/health/ready`` says what it
waits for ("preloading sam3/sam3"), or why start-up failed.

Shutdown (uvicorn on SIGTERM first stops accepting connections and lets the requests it has
finish): readiness turns to 503 "shutting down", requests still in flight and the in-process
job worker's running jobs get ``server.shutdown_grace_s`` to finish, then the models unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar.types import ASGIApp, Receive, Scope, Send

from engines.errors import VisionError
from engines.pool import ModelPool
from service.jobs.base import JobBackend
from service.metrics import Metrics, multiproc_dir
from service.settings import Settings

log = logging.getLogger(__name__)
# With several worker processes each refreshes its gauges this often (a scrape reaches one).
METRICS_REFRESH_S = 5.0


class Lifecycle:
    """What the API process is doing: starting, preloading, ready, failed or stopping.

    Args:
        settings: The service settings (``runtime.preload``, ``server.shutdown_grace_s``).
        pool: The model pool (preloaded at start, closed at the end).
        jobs: The job backend (started, then closed within the grace period).
        metrics: Refreshed periodically when worker processes share metrics.
    """

    def __init__(
        self, settings: Settings, pool: ModelPool, jobs: JobBackend, metrics: Metrics | None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.jobs = jobs
        self.metrics = metrics
        self._waiting_for = "starting up"
        self._preloaded = False
        self._failure: str | None = None
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- requests -------------------------------------------------------------------------
    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting the HTTP requests in flight (what shutdown waits for)."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            self._in_flight += 1
            self._idle.clear()
            try:
                await app(scope, receive, send)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return middleware

    # -- start-up -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """The lifespan: start, serve, then shut down gracefully."""
        await self.jobs.start()
        self._tasks.append(asyncio.create_task(self._preload(), name="preload"))
        if self.metrics is not None and multiproc_dir():
            self._tasks.append(asyncio.create_task(self._refresh_metrics(), name="metrics"))
        try:
            yield
        finally:
            await self._shut_down()

    async def _preload(self) -> None:
        for entry in self.settings.runtime.preload:
            name, _, variant = entry.partition(":")
            label = entry
            try:
                label = self.pool.resolve(name, variant or None).label
                self._waiting_for = f"preloading {label}"
                log.info("preloading %s", label)
                await self.pool.load(name, variant or None, pinned=True)
            except VisionError as exc:
                log.exception("preloading %s failed", label)
                self._failure = f"Preloading {label} failed: {exc.detail}"
                return
            except Exception as exc:
                log.exception("preloading %s failed", label)
                self._failure = (
                    f"Preloading {label} failed ({type(exc).__name__}); the server log has "
                    "the details."
                )
                return
        self._preloaded = True
        if self.settings.runtime.preload:
            log.info("preloaded %s", ", ".join(self.settings.runtime.preload))

    async def readiness(self) -> str | None:
        """None when ready to take traffic, else why not."""
        if self._stopping:
            return "The server is shutting down."
        if self._failure is not None:
            return self._failure
        if not self._preloaded:
            return f"Not ready: {self._waiting_for}."
        ok, detail = await self.jobs.health()
        if not ok:
            return f"The job store does not answer: {detail}."
        return None

    async def _refresh_metrics(self) -> None:
        assert self.metrics is not None
        while True:
            await asyncio.sleep(METRICS_REFRESH_S)
            try:
                await self.metrics.refresh()
            except Exception:
                log.exception("refreshing the metrics failed")

    # -- shutdown -------------------------------------------------------------------------
    async def _shut_down(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        grace_s = self.settings.server.shutdown_grace_s
        await asyncio.gather(self._drain(grace_s), self.jobs.close(grace_s))
        await self.pool.close()
        if self.metrics is not None:
            self.metrics.process_exited()

    async def _drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the requests in flight."""
        if self._idle.is_set():
            return
        log.info("waiting up to %g s for %d requests in flight", grace_s, self._in_flight)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning(
                "%d requests still in flight after shutdown_grace_s (%g s); stopping anyway",
                self._in_flight,
                grace_s,
            )
