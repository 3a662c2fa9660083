"""The in-process job backend: an asyncio worker pool inside the API process.

The default when no Redis is configured. Jobs live in this process only, so it serves a
single API process (``vision-api serve --workers N`` refuses it); they are lost on restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from engines.errors import UnavailableError
from service.arrays import to_builtin
from service.images import DecodedImage
from service.inference import InferenceService
from service.jobs.base import QUEUE_FULL_RETRY_AFTER_S, JobBackend, unknown_job
from service.jobs.execution import run_inference
from service.schemas.common import InferenceRequest
from service.schemas.jobs import FINAL_STATUSES, Job, JobList, JobStatus, JobSubmitted, JobSummary
from service.settings import JobSettings

log = logging.getLogger(__name__)


@dataclass
class _Record:
    job_id: str
    model_type: str
    request: InferenceRequest | None
    images: Sequence[DecodedImage]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: JobStatus = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict | None = None
    attempts: int = 0
    task: asyncio.Task[None] | None = None
    expires_at: float | None = None  # time.monotonic() after which a finished job is dropped

    def view(self) -> Job:
        return Job(
            job_id=self.job_id,
            model_type=self.model_type,
            status=self.status,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            attempts=self.attempts,
            result=self.result,
        )


class MemoryJobBackend(JobBackend):
    """``job_concurrency`` asyncio workers; finished jobs dropped after ``job_retention_s``.

    Args:
        inference: Runs the jobs (the API's own pool).
        settings: The job settings.
    """

    name = "memory"

    def __init__(self, inference: InferenceService, settings: JobSettings) -> None:
        self.inference = inference
        self.settings = settings
        self._jobs: dict[str, _Record] = {}  # insertion order is creation order
        self._counts: Counter[str] = Counter()  # jobs per status
        # (expires_at, job id) in finishing order: the retention is one for all, so the
        # oldest expires first and pruning reads only what expired
        self._expiries: deque[tuple[float, str]] = deque()
        self._unfinished = 0
        self._queue: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the workers and the retention sweeper."""
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"job-worker-{i}")
            for i in range(self.settings.job_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._sweep(), name="job-sweeper"))

    async def close(self, grace_s: float = 0.0) -> None:
        """Take no more jobs; let the running ones finish within ``grace_s``, then stop.

        A job still running after ``grace_s`` is cancelled and recorded failed, as is each
        pending job: this backend keeps jobs in this process only, so none would run again.
        """
        self._queue = None  # submissions are refused from here on
        for task in self._tasks:  # the workers' loops: no new job starts
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        running = {r.task for r in self._jobs.values() if r.task and not r.task.done()}
        if running and grace_s > 0:
            log.info("waiting up to %g s for %d running jobs to finish", grace_s, len(running))
            _, running = await asyncio.wait(running, timeout=grace_s)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for record in list(self._jobs.values()):
            if record.status == "running":
                log.warning("job %s stopped unfinished by the shutdown", record.job_id)
                self._finish(
                    record,
                    None,
                    f"The server shut down while the job was running; it did not finish within "
                    f"shutdown_grace_s ({grace_s:g} s). Submit it again.",
                )
            elif record.status == "pending":
                self._finish(
                    record, None, "The server shut down before the job ran. Submit it again."
                )

    async def health(self) -> tuple[bool, str | None]:
        """Always up while the process is."""
        return True, None

    async def submit(
        self, model_type: str, request: InferenceRequest, images: Sequence[DecodedImage]
    ) -> JobSubmitted:
        """Queue a job, or refuse it when ``max_pending_jobs`` are unfinished."""
        if self._queue is None:
            raise UnavailableError(
                "The job queue is not running (the server is starting or stopping).",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        if self._unfinished >= self.settings.max_pending_jobs:
            raise UnavailableError(
                f"The job queue is full ({self._unfinished} jobs waiting or running, limit "
                f"{self.settings.max_pending_jobs}); retry later.",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        record = _Record(uuid.uuid4().hex, model_type, request, images)
        self._jobs[record.job_id] = record
        self._counts["pending"] += 1
        self._unfinished += 1
        self._queue.put_nowait(record.job_id)
        return JobSubmitted(
            job_id=record.job_id,
            model_type=model_type,
            status="pending",
            created_at=record.created_at,
        )

    async def get(self, job_id: str) -> Job:
        """The job with its result."""
        return self._find(job_id).view()

    async def delete(self, job_id: str) -> None:
        """Forget the job; a pending one never runs, a running one is cancelled."""
        record = self._find(job_id)
        del self._jobs[job_id]
        self._counts[record.status] -= 1
        if record.status not in FINAL_STATUSES:
            self._unfinished -= 1
        if record.task is not None and not record.task.done():
            record.task.cancel()

    async def list(self, status: JobStatus | None, limit: int) -> JobList:
        """Newest first.

        Walks back from the newest job until ``limit`` match (no copy of the jobs); the total
        comes from the per-status counts.
        """
        self._drop_expired()
        matching = (r for r in reversed(self._jobs.values()) if status in (None, r.status))
        summaries = [
            msgspec.convert(msgspec.structs.asdict(r.view()), JobSummary)
            for r in itertools.islice(matching, limit)
        ]
        total = len(self._jobs) if status is None else self._counts[status]
        return JobList(jobs=summaries, total=total)

    async def counts(self) -> dict[str, int]:
        """Jobs per status."""
        self._drop_expired()
        return {s: self._counts[s] for s in ("pending", "running", "completed", "failed")}

    def _find(self, job_id: str) -> _Record:
        self._drop_expired()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise unknown_job(job_id, self.settings.job_retention_s) from None

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            _, job_id = self._expiries.popleft()
            record = self._jobs.pop(job_id, None)
            if record is not None:
                self._counts[record.status] -= 1

    async def _sweep(self) -> None:
        interval_s = max(0.05, min(self.settings.job_retention_s / 2, 30.0))
        while True:
            await asyncio.sleep(interval_s)
            self._drop_expired()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job_id = await self._queue.get()
            record = self._jobs.get(job_id)
            if record is None or record.status != "pending":
                continue  # deleted while it waited
            self._set_status(record, "running")
            record.started_at = datetime.now(UTC)
            record.attempts += 1
            record.task = asyncio.create_task(self._run(record), name=f"job-{job_id}")
            # wait() rather than await: a job cancelled by DELETE must not stop this worker
            await asyncio.wait({record.task})

    async def _run(self, record: _Record) -> None:
        assert record.request is not None
        delay_s = self.settings.debug_job_delay_s
        try:
            async with asyncio.timeout(self.settings.job_timeout_s):
                if delay_s:
                    await asyncio.sleep(delay_s)  # test aid, see JobSettings.debug_job_delay_s
                outcome = await run_inference(
                    self.inference, record.model_type, record.request, record.images
                )
        except TimeoutError:
            self._finish(
                record,
                None,
                f"The job ran longer than job_timeout_s "
                f"({self.settings.job_timeout_s:g} s) and was stopped.",
            )
            return
        result = (
            msgspec.to_builtins(outcome.response, enc_hook=to_builtin)
            if outcome.response is not None
            else None
        )
        self._finish(record, result, outcome.error)

    def _finish(self, record: _Record, result: dict | None, error: str | None) -> None:
        if record.status in FINAL_STATUSES:
            return
        self._set_status(record, "completed" if error is None else "failed")
        record.result, record.error = result, error
        record.finished_at = datetime.now(UTC)
        record.expires_at = time.monotonic() + self.settings.job_retention_s
        record.request, record.images = None, ()  # the bytes are no longer needed
        if record.job_id in self._jobs:
            self._unfinished -= 1
            self._expiries.append((record.expires_at, record.job_id))

    def _set_status(self, record: _Record, status: JobStatus) -> None:
        if record.job_id in self._jobs:  # a deleted job is counted nowhere
            self._counts[record.status] -= 1
            self._counts[status] += 1
        record.status = status
