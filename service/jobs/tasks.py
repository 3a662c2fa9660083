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
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Retry, Worker, func

from service.inference import InferenceService
from service.jobs import codec
from service.jobs.execution import Outcome, decode_payload, run_inference
from service.jobs.redis_store import FUNCTION_NAME, RedisJobStore
from service.settings import Settings

log = logging.getLogger(__name__)


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
        model_type, request, images = decode_payload(payload)
    except Exception as exc:  # a payload from an incompatible version of the API
        log.exception("job %s: undecodable payload", job_id)
        await store.finish(job_id, Outcome(error=f"The queued job could not be read ({exc})."))
        return
    if settings.jobs.debug_job_delay_s:
        await asyncio.sleep(settings.jobs.debug_job_delay_s)  # test aid, see JobSettings
    outcome = await run_inference(ctx["inference"], model_type, request, images)
    if outcome.retry_after_s is not None and attempt < settings.jobs.job_max_tries:
        raise Retry(defer=outcome.retry_after_s)  # "not now" (e.g. out of memory): try later
    await store.finish(job_id, outcome)


def redis_settings(url: str) -> RedisSettings:
    """The arq connection settings for ``redis_url``."""
    return RedisSettings.from_dsn(url)


def build_worker(
    settings: Settings, inference: InferenceService | None = None, *, handle_signals: bool = True
) -> Worker:
    """An arq worker for ``settings``.

    Args:
        settings: The service settings; ``jobs.redis_url`` must be set.
        inference: Run jobs with this (the API's, for the embedded worker); when None, the
            worker builds its own pool in ``on_startup``, once per process.
        handle_signals: Install SIGTERM/SIGINT handlers (not inside uvicorn).
    """
    jobs = settings.jobs
    if not jobs.redis_url:
        raise ValueError("The arq worker needs VISION_API_REDIS_URL (jobs.redis_url).")

    async def on_startup(ctx: dict[str, Any]) -> None:
        if inference is None:
            from service.app import build_inference, build_pool

            ctx["inference"] = build_inference(settings, build_pool(settings))
            for model_type in settings.runtime.preload:
                name, _, variant = model_type.partition(":")
                await ctx["inference"].pool.load(name, variant or None)
        else:
            ctx["inference"] = inference
        ctx["settings"] = settings
        ctx["job_store"] = RedisJobStore(ctx["redis"], jobs)
        log.info("job worker ready: queue %s:queue, %d jobs at a time, job_timeout_s %g, "
                 "job_max_tries %d", jobs.redis_key_prefix, jobs.job_concurrency,
                 jobs.job_timeout_s, jobs.job_max_tries)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if inference is None and "inference" in ctx:
            await ctx["inference"].pool.close()

    return Worker(
        functions=[func(run_inference_job, name=FUNCTION_NAME)],
        queue_name=f"{jobs.redis_key_prefix}:queue",
        redis_settings=redis_settings(jobs.redis_url),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
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
