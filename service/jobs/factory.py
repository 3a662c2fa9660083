"""Choosing the job backend from the settings."""

from __future__ import annotations

from service.inference import InferenceService
from service.jobs.base import JobBackend
from service.settings import Settings


def create_backend(settings: Settings, inference: InferenceService) -> JobBackend:
    """Redis (arq) when ``jobs.redis_url`` is set, the in-process backend otherwise."""
    if settings.jobs.redis_url:
        from service.jobs.arq_backend import RedisJobBackend

        return RedisJobBackend(inference, settings)
    from service.jobs.memory import MemoryJobBackend

    return MemoryJobBackend(inference, settings.jobs)
