"""The job backend interface."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from engines.errors import NotFoundError
from service.images import DecodedImage
from service.schemas.common import InferenceRequest
from service.schemas.jobs import Job, JobList, JobStatus, JobSubmitted

QUEUE_FULL_RETRY_AFTER_S = 5


def unknown_job(job_id: str, retention_s: float) -> NotFoundError:
    """The 404 for a job id that is not (or no longer) known."""
    return NotFoundError(
        f"Unknown job {job_id!r}: it never existed, was deleted, or finished more than "
        f"{retention_s:g} s ago."
    )


class JobBackend(abc.ABC):
    """Where async jobs are queued, run and kept.

    Requests reach :meth:`submit` validated and with their images decoded, so a job can only
    fail for a reason of the server's (a model that does not load, an inference error).
    """

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start workers or connections (called from the app's lifespan)."""

    async def close(self, grace_s: float = 0.0) -> None:  # noqa: B027 - optional hook
        """Stop workers and close connections.

        Args:
            grace_s: How long a job running in this process may take to finish; one that does
                not is recorded failed (in-process) or put back on the queue (arq).
        """

    @abc.abstractmethod
    async def health(self) -> tuple[bool, str | None]:
        """Whether the backend answers, and why not."""

    @abc.abstractmethod
    async def submit(
        self, model_type: str, request: InferenceRequest, images: Sequence[DecodedImage]
    ) -> JobSubmitted:
        """Queue a job for a canonical ``model_type``.

        Raises:
            UnavailableError: The queue is full or the job store is unreachable (503).
        """

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job:
        """One job with its result.

        Raises:
            NotFoundError: No such job (never was, deleted, or past its retention).
        """

    @abc.abstractmethod
    async def delete(self, job_id: str) -> None:
        """Cancel a job that has not finished, or forget a finished one.

        Raises:
            NotFoundError: No such job.
        """

    @abc.abstractmethod
    async def list(self, status: JobStatus | None, limit: int) -> JobList:
        """Jobs newest first, at most ``limit``, with the total count matching ``status``."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Jobs per status (``pending``, ``running``, ``completed``, ``failed``), for metrics.

        Raises:
            UnavailableError: The job store is unreachable.
        """
