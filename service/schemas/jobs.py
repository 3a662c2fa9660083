"""``/jobs``: async job submission, polling and listing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

JobStatus = Literal["pending", "running", "completed", "failed"]
JOB_STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed")
FINAL_STATUSES = frozenset({"completed", "failed"})


class JobSubmitted(msgspec.Struct, kw_only=True):
    """A job accepted into the queue (``202``)."""

    job_id: str
    model_type: Annotated[str, Meta(description="Canonical model type (aliases are resolved).")]
    status: JobStatus
    created_at: Annotated[datetime, Meta(description="ISO 8601, UTC.")]


class JobSummary(msgspec.Struct, kw_only=True):
    """A job without its result (``GET /jobs`` entries)."""

    job_id: str
    model_type: str
    status: Annotated[
        JobStatus,
        Meta(
            description="pending: queued (or re-queued after its worker stopped); running: a "
            "worker is computing it; completed / failed: finished."
        ),
    ]
    created_at: Annotated[datetime, Meta(description="When it was submitted (ISO 8601, UTC).")]
    started_at: Annotated[
        datetime | None,
        Meta(description="When a worker started its current or last attempt; null while pending."),
    ]
    finished_at: Annotated[datetime | None, Meta(description="When it completed or failed.")]
    error: Annotated[
        str | None, Meta(description="Why it failed (the inference error's detail); else null.")
    ]
    attempts: Annotated[
        int, Meta(description="How many times a worker started it (> 1 after a worker stopped).")
    ] = 0


class Job(JobSummary, kw_only=True):
    """A job and, once completed, its result."""

    result: Annotated[
        dict[str, Any] | None,
        Meta(
            description="Once completed: exactly the response of POST /inference/{model_type} "
            "for the submitted body; otherwise null."
        ),
    ] = None


class JobList(msgspec.Struct, kw_only=True):
    """Jobs, newest first."""

    jobs: list[JobSummary]
    total: Annotated[int, Meta(description="How many jobs match the filter (beyond `limit`).")]
