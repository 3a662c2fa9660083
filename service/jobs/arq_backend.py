"""The Redis job backend: the API enqueues, arq workers (``vision-api worker``) compute.

Every API process reads and writes the same Redis keys (see ``redis_store``), so a job
submitted to one replica can be polled, listed and deleted on any other. With
``embedded_worker`` the API process also runs an arq worker that shares its model pool
(single-box deployments).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from urllib.parse import urlparse

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engines.errors import UnavailableError
from service.images import DecodedImage
from service.inference import InferenceService
from service.jobs.base import QUEUE_FULL_RETRY_AFTER_S, JobBackend, unknown_job
from service.jobs.execution import JobOutcome, encode_payload
from service.jobs.redis_store import RedisJobStore, Snapshot, derive
from service.schemas.common import InferenceRequest
from service.schemas.jobs import Job, JobList, JobStatus, JobSubmitted, JobSummary
from service.settings import Settings

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 1.0
UNREACHABLE_RETRY_AFTER_S = 5
_LIST_CHUNK = 500


class RedisJobBackend(JobBackend):
    """Jobs in Redis, run by arq workers.

    Args:
        inference: The API's inference service (used only by the embedded worker).
        settings: The service settings; ``jobs.redis_url`` is set.
    """

    name = "redis"

    def __init__(self, inference: InferenceService, settings: Settings) -> None:
        assert settings.jobs.redis_url
        self.inference = inference
        self.settings = settings
        self.url = settings.jobs.redis_url
        self._redis: Redis | None = None
        self._store: RedisJobStore | None = None
        self._embedded: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        """The Redis address without credentials, for messages."""
        url = urlparse(self.url)
        return f"{url.hostname or 'localhost'}:{url.port or 6379}{url.path or ''}"

    @property
    def store(self) -> RedisJobStore:
        """The job records (after :meth:`start`)."""
        if self._store is None:
            raise UnavailableError(
                "The job store is not connected yet (the server is starting).",
                retry_after_s=UNREACHABLE_RETRY_AFTER_S,
            )
        return self._store

    async def start(self) -> None:
        """Create the client (no connection yet: the API starts even when Redis is down)."""
        self._redis = Redis.from_url(self.url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self._store = RedisJobStore(self._redis, self.settings.jobs)
        if self.settings.jobs.embedded_worker:
            self._embedded = asyncio.create_task(self._run_embedded(), name="embedded-arq-worker")

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop the embedded worker, close the client.

        The embedded worker's running jobs go back on the queue at once (arq's retry on
        cancellation), whatever ``grace_s``: another worker runs them again.
        """
        if self._embedded is not None:
            self._embedded.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._embedded
            self._embedded = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _run_embedded(self) -> None:
        from service.jobs.tasks import WorkerRuntime, supervise

        await supervise(WorkerRuntime(self.settings, self.inference), handle_signals=False)

    async def health(self) -> tuple[bool, str | None]:
        """A PING within a second."""
        try:
            if self._redis is None:
                return False, "not connected yet"
            await asyncio.wait_for(self._redis.ping(), HEALTH_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("Redis at %s unreachable: %s: %s", self.where, type(exc).__name__, exc)
            return False, f"Redis at {self.where} unreachable ({type(exc).__name__})"
        return True, None

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[RedisJobStore]:
        store = self.store
        try:
            yield store
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("Redis at %s unreachable: %s: %s", self.where, type(exc).__name__, exc)
            raise UnavailableError(
                f"The job store (Redis at {self.where}) is unreachable ({type(exc).__name__}). "
                "Jobs cannot be submitted or read until it is back; the synchronous "
                "/inference endpoints still work.",
                retry_after_s=UNREACHABLE_RETRY_AFTER_S,
            ) from None

    async def submit(
        self, model_type: str, request: InferenceRequest, images: Sequence[DecodedImage]
    ) -> JobSubmitted:
        """Enqueue, unless ``max_pending_jobs`` jobs are already queued or running."""
        limit = self.settings.jobs.max_pending_jobs
        async with self._reachable() as store:
            queued = await store.queued()
            if queued >= limit:  # a soft bound: two replicas may both pass at the edge
                raise UnavailableError(
                    f"The job queue is full ({queued} jobs waiting or running, limit {limit}); "
                    "retry later.",
                    retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
                )
            job_id = uuid.uuid4().hex
            created_ms = await store.create(
                job_id, model_type, encode_payload(model_type, request, images)
            )
        return JobSubmitted(
            job_id=job_id,
            model_type=model_type,
            status="pending",
            created_at=datetime.fromtimestamp(created_ms / 1000, UTC),
        )

    async def get(self, job_id: str) -> Job:
        """The job with its result."""
        async with self._reachable() as store:
            (snapshot,) = await store.snapshots([job_id], with_result=True)
            if snapshot is None:
                raise unknown_job(job_id, self.settings.jobs.job_retention_s)
            return await self._resolve(store, snapshot)

    async def delete(self, job_id: str) -> None:
        """Forget the job; a queued one never runs, a running one is aborted."""
        async with self._reachable() as store:
            if not await store.remove(job_id):
                raise unknown_job(job_id, self.settings.jobs.job_retention_s)

    async def list(self, status: JobStatus | None, limit: int) -> JobList:
        """Newest first, paged from an index (no keyspace scan, no reading of every job).

        Without a filter the page comes from the index of all jobs; ``completed`` and
        ``failed`` from their status's index. ``pending`` and ``running`` are derived from
        arq's keys as well (a job whose worker stopped is pending again), so those two read
        the unfinished jobs, which ``max_pending_jobs`` bounds; ``failed`` reads them first too,
        to record the ones arq ended without the job function (timeouts, lost workers).
        """
        async with self._reachable() as store:
            await store.prune()
            if status in (None, "completed", "failed"):
                if status == "failed":
                    await self._unfinished(store)  # records what arq ended as failed
                index = store.index if status is None else store.by_status[status]
                jobs = await self._page(store, index, status, limit)
                total = (await store.counts())["all" if status is None else status]
                return JobList(jobs=jobs, total=total)
            matching = [job for job in await self._unfinished(store) if job.status == status]
            matching.sort(key=lambda job: job.created_at, reverse=True)
            return JobList(jobs=[_summary(job) for job in matching[:limit]], total=len(matching))

    async def counts(self) -> dict[str, int]:
        """Jobs per recorded status, from the indexes' sizes."""
        async with self._reachable() as store:
            await store.prune()
            counts = await store.counts()
        counts.pop("all")
        return counts

    async def _page(
        self, store: RedisJobStore, index: str, status: JobStatus | None, limit: int
    ) -> builtins.list[JobSummary]:
        """Up to ``limit`` jobs of ``index`` (in ``status`` when given), reading page by page."""
        found: builtins.list[JobSummary] = []
        seen: set[str] = set()  # jobs created meanwhile shift the positions
        start = 0
        while len(found) < limit:
            count = min(_LIST_CHUNK, limit - len(found) + 8)  # a few spare for pruned entries
            ids = await store.page(index, start, count)
            if not ids:
                break
            start += len(ids)
            gone = []
            for job_id, snapshot in zip(ids, await store.snapshots(ids, False), strict=True):
                if snapshot is None:
                    gone.append(job_id)
                    continue
                if job_id in seen:
                    continue
                seen.add(job_id)
                job = await self._resolve(store, snapshot)
                if (status is None or job.status == status) and len(found) < limit:
                    found.append(_summary(job))
            if gone:
                await store.prune(gone)
                start -= len(gone)  # the entries after them moved up
        return found

    async def _unfinished(self, store: RedisJobStore) -> builtins.list[Job]:
        """The jobs recorded pending or running, as they are now (arq-ended ones recorded)."""
        jobs: builtins.list[Job] = []
        gone: builtins.list[str] = []
        for state in ("pending", "running"):
            ids = await store.page(store.by_status[state])
            for start in range(0, len(ids), _LIST_CHUNK):
                chunk = ids[start : start + _LIST_CHUNK]
                for job_id, snapshot in zip(
                    chunk, await store.snapshots(chunk, False), strict=True
                ):
                    if snapshot is None:
                        gone.append(job_id)
                    else:
                        jobs.append(await self._resolve(store, snapshot))
        if gone:
            await store.prune(gone)
        return jobs

    async def _resolve(self, store: RedisJobStore, snapshot: Snapshot) -> Job:
        job, ended_ms = derive(snapshot, self.settings.jobs)
        if ended_ms is not None:  # arq ended it; record that so it expires like any other
            await store.finish(job.job_id, JobOutcome(error=job.error), ended_ms)
        return job


def _summary(job: Job) -> JobSummary:
    return JobSummary(
        job_id=job.job_id,
        model_type=job.model_type,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        attempts=job.attempts,
    )
