"""Job records in Redis, next to arq's own keys, shared by the API processes and the workers.

Keys (``P`` is ``redis_key_prefix``; arq's keys are global and named by the job id)::

    P:queue          arq's queue: sorted set job id -> time to run (ms)
    P:jobs           the index: sorted set job id -> created (ms), for GET /jobs without SCAN
    P:jobs:<status>  one sorted set per recorded status (pending, running, completed, failed),
                     job id -> created (ms): GET /jobs?status=... pages through one of them
    P:jobs:expiry    sorted set job id -> when its finished hash expires (ms): what to prune
    P:job:<id>       hash: model_type, status, created_ms, started_ms, finished_ms, attempts,
                     error, result (msgpack of the inference response)
    arq:job:<id>     arq: the serialised job (the payload), until it finishes
    arq:in-progress:<id>  arq: a worker holds the job; expires job_timeout_s + 10 s after it
                     started, so a job whose worker died is picked up again
    arq:result:<id>  arq: how the job ended, kept job_retention_s (the job's arguments dropped)

The hash is what the job function writes (``running`` when it actually starts, then
``completed`` or ``failed``), conditionally on the hash still existing, so a deleted job is
not brought back and a job run twice writes the same thing twice. Whatever the job function
could not write (a worker killed mid-job, a timeout, too many tries, an abort) is read from
arq's keys in the same transaction; see :func:`derive`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from arq.constants import (
    abort_jobs_ss,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import deserialize_result, serialize_job
from redis.asyncio import Redis

from service.arrays import to_builtin
from service.jobs import codec
from service.jobs.execution import JobOutcome
from service.schemas.jobs import FINAL_STATUSES, Job
from service.settings import JobSettings

FUNCTION_NAME = "run_inference_job"
_FIELDS = ("model_type", "status", "created_ms", "started_ms", "finished_ms", "attempts", "error")

STATUSES = ("pending", "running", "completed", "failed")
# Mark a job running, unless it was deleted ("gone") or has already finished (a re-run); move
# it from the pending to the running index. KEYS: hash, pending, running; ARGV: started_ms,
# attempt, job id.
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status == 'completed' or status == 'failed' then return status end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', ARGV[1], 'attempts', ARGV[2])
local created = redis.call('HGET', KEYS[1], 'created_ms')
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], created, ARGV[3])
return 'running'
"""
# Record the end of a job once, unless it was deleted; then keep it for the retention time,
# in its final status's index, with its expiry noted. KEYS: hash, pending, running, the final
# index, expiry; ARGV: status, finished_ms, error, result, keep_ms, job id, expires at (ms).
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_ms', ARGV[2], 'error', ARGV[3],
           'result', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local created = redis.call('HGET', KEYS[1], 'created_ms')
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[4], created, ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
return 1
"""


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch."""
    return int(time.time() * 1000)


def _time(ms: bytes | str | int | None) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


@dataclass
class Snapshot:
    """One job's hash fields and arq's keys, read in one transaction."""

    job_id: str
    fields: dict[str, bytes | None]
    result: bytes | None
    in_progress: bool
    queue_score: float | None
    arq_result: bytes | None


class RedisJobStore:
    """Reads and writes job records; used by the API backend and the arq job function.

    Args:
        redis: A client (bytes responses).
        settings: The job settings (prefix, retention, timeouts).
    """

    def __init__(self, redis: Redis, settings: JobSettings) -> None:
        self.redis = redis
        self.settings = settings
        prefix = settings.redis_key_prefix
        self.queue = f"{prefix}:queue"
        self.index = f"{prefix}:jobs"
        self.by_status = {status: f"{prefix}:jobs:{status}" for status in STATUSES}
        self.expiry = f"{prefix}:jobs:expiry"
        self._job_prefix = f"{prefix}:job:"
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)

    def key(self, job_id: str) -> str:
        """The hash of one job."""
        return self._job_prefix + job_id

    @property
    def retention_ms(self) -> int:
        """How long a finished job is kept."""
        return max(1, int(self.settings.job_retention_s * 1000))

    @property
    def lifetime_ms(self) -> int:
        """Longest a job can exist: queued until arq expires it, every try, then retention."""
        tries_ms = (self.settings.job_timeout_s + 10) * 1000 * self.settings.job_max_tries
        return int(expires_extra_ms + tries_ms) + self.retention_ms

    # -- the API's side -------------------------------------------------------------------
    async def create(self, job_id: str, model_type: str, payload: bytes) -> int:
        """Record a pending job and put it on arq's queue, in one transaction.

        This is what ``ArqRedis.enqueue_job`` writes (the serialised job and the queue entry),
        plus the hash and the index entry, so that no reader sees a job half-created.
        """
        created = now_ms()
        job = serialize_job(
            FUNCTION_NAME, (payload,), {}, None, created, serializer=codec.serialize
        )
        async with self.redis.pipeline(transaction=True) as tr:
            tr.hset(
                self.key(job_id),
                mapping={
                    "model_type": model_type,
                    "status": "pending",
                    "created_ms": created,
                    "attempts": 0,
                },
            )
            tr.pexpire(self.key(job_id), self.lifetime_ms)
            tr.zadd(self.index, {job_id: created})
            tr.zadd(self.by_status["pending"], {job_id: created})
            tr.psetex(job_key_prefix + job_id, expires_extra_ms, job)
            tr.zadd(self.queue, {job_id: created})
            await tr.execute()
        return created

    async def queued(self) -> int:
        """Jobs on arq's queue: waiting, or running (arq removes them when they end)."""
        return int(await self.redis.zcard(self.queue))

    async def snapshots(self, job_ids: Sequence[str], with_result: bool) -> list[Snapshot | None]:
        """Each job's state (None for a job with no hash), each read atomically."""
        fields = (*_FIELDS, "result") if with_result else _FIELDS
        async with self.redis.pipeline(transaction=True) as tr:
            for job_id in job_ids:
                tr.hmget(self.key(job_id), list(fields))
                tr.exists(in_progress_key_prefix + job_id)
                tr.zscore(self.queue, job_id)
                tr.get(result_key_prefix + job_id)
            replies = await tr.execute()
        out: list[Snapshot | None] = []
        for i, job_id in enumerate(job_ids):
            values, in_progress, score, arq_result = replies[4 * i : 4 * i + 4]
            record = dict(zip(fields, values, strict=True))
            if record["status"] is None:
                out.append(None)
                continue
            out.append(
                Snapshot(
                    job_id, record, record.pop("result", None), bool(in_progress), score, arq_result
                )
            )
        return out

    async def remove(self, job_id: str) -> bool:
        """Forget a job; one still queued never runs, a running one is aborted.

        Returns:
            Whether the job existed.
        """
        async with self.redis.pipeline(transaction=True) as tr:
            tr.exists(self.key(job_id))
            tr.exists(in_progress_key_prefix + job_id)
            tr.zrem(self.queue, job_id)
            tr.delete(
                self.key(job_id),
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                retry_key_prefix + job_id,
            )
            for index in (self.index, self.expiry, *self.by_status.values()):
                tr.zrem(index, job_id)
            existed, in_progress, *_ = await tr.execute()
        if in_progress:
            # A worker holds it: arq's abort cancels the running task (allow_abort_jobs).
            await self.redis.zadd(abort_jobs_ss, {job_id: now_ms()})
        return bool(existed)

    async def prune(self, gone: Sequence[str] = ()) -> None:
        """Drop the index entries of jobs past their retention (reading only what expired).

        Also those of ``gone`` (jobs found without a hash), and any older than a job can live.
        """
        now = now_ms()
        expired = [i.decode() for i in await self.redis.zrangebyscore(self.expiry, "-inf", now)]
        ids = [*gone, *expired]
        indexes = (self.index, *self.by_status.values())
        async with self.redis.pipeline(transaction=False) as tr:
            if ids:
                for index in (*indexes, self.expiry):
                    tr.zrem(index, *ids)
            for index in indexes:
                tr.zremrangebyscore(index, "-inf", now - self.lifetime_ms)
            tr.zremrangebyscore(self.expiry, "-inf", now - self.lifetime_ms)
            await tr.execute()

    async def page(self, index: str, start: int = 0, count: int | None = None) -> list[str]:
        """Job ids of ``index``, newest first, ``count`` of them (all when None) from ``start``."""
        stop = -1 if count is None else start + count - 1
        return [i.decode() for i in await self.redis.zrevrange(index, start, stop)]

    async def counts(self) -> dict[str, int]:
        """Jobs per recorded status, and ``all``: one ZCARD each, no job read."""
        async with self.redis.pipeline(transaction=False) as tr:
            for index in (self.index, *self.by_status.values()):
                tr.zcard(index)
            total, *per_status = await tr.execute()
        return {"all": int(total), **dict(zip(STATUSES, map(int, per_status), strict=True))}

    # -- the worker's side ----------------------------------------------------------------
    async def mark_running(self, job_id: str, attempt: int) -> str:
        """``running`` when this worker should run the job; ``gone`` or its final status not."""
        reply = await self._start(
            keys=[self.key(job_id), self.by_status["pending"], self.by_status["running"]],
            args=[now_ms(), attempt, job_id],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def finish(
        self, job_id: str, outcome: JobOutcome, finished_ms: int | None = None
    ) -> None:
        """Record the end of a job (once), kept for the retention time after it finished."""
        finished_ms = finished_ms or now_ms()
        result = (
            b""
            if outcome.response is None
            else msgspec.msgpack.encode(outcome.response, enc_hook=to_builtin)
        )
        keep_ms = max(1, self.retention_ms - (now_ms() - finished_ms))
        status = "completed" if outcome.error is None else "failed"
        await self._finish(
            keys=[
                self.key(job_id),
                self.by_status["pending"],
                self.by_status["running"],
                self.by_status[status],
                self.expiry,
            ],
            args=[
                status,
                finished_ms,
                outcome.error or "",
                result,
                keep_ms,
                job_id,
                now_ms() + keep_ms,
            ],
        )


def derive(snapshot: Snapshot, settings: JobSettings) -> tuple[Job, int | None]:
    """The job as the API reports it, from one snapshot.

    Also returns the finish time when arq ended the job but the job function could not record
    it (the caller writes it back then).

    - ``completed`` / ``failed`` in the hash: final.
    - arq has a result but the hash is not final: arq ended the job (timeout, too many tries,
      expired, aborted): ``failed`` with arq's reason.
    - a worker holds it (in-progress key) and the job function marked it: ``running``.
    - otherwise, on the queue: ``pending`` (never started, or re-queued after its worker was
      stopped or died; ``started_at`` is null again).
    - nowhere: ``failed``, lost (the queue's keys were removed from Redis).
    """
    f = snapshot.fields
    status = _text(f["status"]) or "pending"
    job = Job(
        job_id=snapshot.job_id,
        model_type=_text(f["model_type"]) or "",
        status=status,  # type: ignore[arg-type]
        created_at=_time(f["created_ms"]) or datetime.now(UTC),
        started_at=_time(f["started_ms"]),
        finished_at=_time(f["finished_ms"]),
        error=_text(f["error"]),
        attempts=int(f["attempts"] or 0),
        result=msgspec.msgpack.decode(snapshot.result) if snapshot.result else None,
    )
    if status in FINAL_STATUSES:
        return job, None
    if snapshot.arq_result is not None:
        ended = deserialize_result(snapshot.arq_result, deserializer=codec.deserialize)
        finished_ms = int(ended.finish_time.timestamp() * 1000)
        job.status, job.finished_at = "failed", ended.finish_time.astimezone(UTC)
        job.error = arq_failure_reason(ended.result, ended.success, settings)
        return job, finished_ms
    if snapshot.in_progress and status == "running":
        return job, None
    if snapshot.queue_score is not None or snapshot.in_progress:
        job.status, job.started_at = "pending", None
        return job, None
    job.status, job.finished_at = "failed", datetime.now(UTC)
    job.error = "The job left the queue without a result (its Redis keys were removed)."
    return job, now_ms()


def arq_failure_reason(result: object, success: bool, settings: JobSettings) -> str:
    """A user-facing reason for a job that arq ended without the job function recording it."""
    if success:
        return "The job ended without recording a result."
    kind = result.get("exception") if isinstance(result, dict) else None
    message = str(result.get("message", "")) if isinstance(result, dict) else str(result)
    if kind == "TimeoutError":
        return (
            f"The job ran longer than job_timeout_s ({settings.job_timeout_s:g} s) and was stopped."
        )
    if kind == "CancelledError":
        return "The job was cancelled."
    if kind == "JobExecutionFailed" and "retries exceeded" in message:
        return (
            f"The job was started {settings.job_max_tries} times and never finished: each "
            "time its worker stopped or died (job_max_tries reached)."
        )
    if kind == "JobExecutionFailed" and "expired" in message:
        return "The job waited in the queue until it expired; no worker took it."
    if not message:
        return f"The job failed ({kind})."
    return f"The job failed: {kind or 'error'}: {message}"
