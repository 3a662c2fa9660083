"""The arq side: the job function and the worker that runs it.

Retry semantics (arq 0.28, read from its source):

- A worker claims a job by setting ``arq:in-progress:<id>`` with a TTL of ``job_timeout_s + 10``
  and holds it until the job ends. If the worker dies (SIGKILL, OOM, power), the key expires
  and the next worker to poll the queue runs the job again (``attempts`` + 1); after
  ``job_max_tries`` starts arq records it failed ("max retries exceeded").
- SIGTERM / SIGINT: arq cancels the running jobs and, with ``retry_jobs``, puts them back on the
  queue at once (in-progress key deleted); another worker runs them again.
- A job longer than ``job_timeout_s`` is cancelled and recorded failed (not retried).
- ``DELETE`` on a running job uses arq's abort (``allow_abort_jobs``): the task is cancelled.

So a job may run more than once; the job function is idempotent: it does nothing for a job
that has already finished or was deleted, and the result write happens once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Retry, Worker, func
from redis.exceptions import RedisError

from service.inference import InferenceService
from service.jobs import codec
from service.jobs.execution import JobOutcome, decode_payload, run_inference
from service.jobs.redis_store import FUNCTION_NAME, RedisJobStore
from service.settings import Settings
from service.wiring import preload

log = logging.getLogger(__name__)
RESTART_S = 5.0


async def run_inference_job(ctx: dict[str, Any], payload: bytes) -> None:
    """Run one queued inference and record its outcome in the job hash (the arq job)."""
    store: RedisJobStore = ctx["job_store"]
    settings: Settings = ctx["settings"]
    job_id, attempt = ctx["job_id"], ctx["job_try"]
    state = await store.mark_running(job_id, attempt)
    if state != "running":
        log.info("job %s not run: %s", job_id, state)  # deleted, or a re-run of a finished job
        return
    try:
        inference: InferenceService = ctx["inference"]
        request_types = {name: e.request for name, e in inference.endpoints.items()}
        model_type, request, images = decode_payload(payload, request_types)
    except Exception as exc:  # a payload from an incompatible version of the API
        log.exception("job %s: undecodable payload", job_id)
        await store.finish(job_id, JobOutcome(error=f"The queued job could not be read ({exc})."))
        return
    if settings.jobs.debug_job_delay_s:
        await asyncio.sleep(settings.jobs.debug_job_delay_s)  # test aid, see JobSettings
    outcome = await run_inference(ctx["inference"], model_type, request, images)
    if outcome.retry_after_s is not None and attempt < settings.jobs.job_max_tries:
        raise Retry(defer=outcome.retry_after_s)  # "not now" (e.g. out of memory): try later
    await store.finish(job_id, outcome)


class WorkerRuntime:
    """What a worker keeps for its whole process, across arq worker restarts: the models.

    Args:
        settings: The service settings; ``jobs.redis_url`` must be set.
        inference: Run jobs with this (the API's, for the embedded worker); when None, it is
            built with ``build`` in the first ``on_startup``, once per process, and closed by
            :meth:`close`.
        build: Builds the inference service from the settings (``service.wiring``'s, for a
            standalone worker); required when ``inference`` is None.
    """

    def __init__(
        self,
        settings: Settings,
        inference: InferenceService | None = None,
        build: Callable[[Settings], InferenceService] | None = None,
    ) -> None:
        if not settings.jobs.redis_url:
            raise ValueError("The arq worker needs VISION_API_REDIS_URL (jobs.redis_url).")
        if inference is None and build is None:
            raise ValueError("WorkerRuntime needs an inference service or a way to build one.")
        self.settings = settings
        self.inference = inference
        self._build = build
        self._owned = inference is None

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        """Arq's on_startup: load the models (first time only), fill the job context."""
        jobs = self.settings.jobs
        if self.inference is None:
            assert self._build is not None
            self.inference = self._build(self.settings)
            await preload(self.settings, self.inference.pool)
        ctx["inference"] = self.inference
        ctx["settings"] = self.settings
        ctx["job_store"] = RedisJobStore(ctx["redis"], jobs)
        log.info(
            "job worker ready: queue %s:queue, %d jobs at a time, job_timeout_s %g, "
            "job_max_tries %d",
            jobs.redis_key_prefix,
            jobs.job_concurrency,
            jobs.job_timeout_s,
            jobs.job_max_tries,
        )

    async def close(self) -> None:
        """Unload the models this runtime loaded."""
        if self._owned and self.inference is not None:
            await self.inference.pool.close()
            self.inference = None


def build_worker(runtime: WorkerRuntime, *, handle_signals: bool = True) -> Worker:
    """An arq worker running :func:`run_inference_job` with the runtime's models.

    Args:
        runtime: The models and settings.
        handle_signals: Install SIGTERM/SIGINT handlers (not inside uvicorn).
    """
    jobs = runtime.settings.jobs
    assert jobs.redis_url
    return Worker(
        functions=[func(run_inference_job, name=FUNCTION_NAME)],
        queue_name=f"{jobs.redis_key_prefix}:queue",
        redis_settings=RedisSettings.from_dsn(jobs.redis_url),
        on_startup=runtime.on_startup,
        handle_signals=handle_signals,
        max_jobs=jobs.job_concurrency,
        job_timeout=jobs.job_timeout_s,
        keep_result=jobs.job_retention_s,
        max_tries=jobs.job_max_tries,
        retry_jobs=True,
        allow_abort_jobs=True,
        health_check_interval=60,
        job_serializer=codec.serialize,
        job_deserializer=codec.deserialize,
    )


async def supervise(runtime: WorkerRuntime, *, handle_signals: bool) -> None:
    """Run an arq worker; start a new one whenever Redis goes away, until told to stop.

    Stops on SIGTERM / SIGINT when ``handle_signals`` (arq cancels the running jobs and puts
    them back on the queue), or when the calling task is cancelled (the embedded worker).
    """
    stop = asyncio.Event()
    while not stop.is_set():
        worker = build_worker(runtime, handle_signals=handle_signals)
        if handle_signals:  # (without, arq's close() "signals" itself: not a reason to stop)
            worker.on_stop = lambda _signal: stop.set()
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            if not stop.is_set():
                raise  # our task was cancelled, not the worker stopped by a signal
        except (RedisError, OSError) as exc:
            log.warning(
                "job worker lost Redis (%s: %s); starting again in %g s",
                type(exc).__name__,
                exc,
                RESTART_S,
            )
        finally:
            with contextlib.suppress(Exception):
                await worker.close()  # re-queues cancelled jobs, unless Redis is gone
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESTART_S)
