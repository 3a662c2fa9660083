"""``vision-api worker``: an arq worker process for the Redis job backend."""

from __future__ import annotations

import asyncio
import sys

from service.request_ids import configure_logging
from service.settings import Settings


def run_worker(config_path: str | None) -> int:
    """Run an arq worker until SIGTERM / SIGINT; the exit status.

    Models load once per process; if Redis goes away the worker waits and reconnects.

    Args:
        config_path: The same TOML settings file as ``vision-api serve --config``
            (``VISION_API_CONFIG`` when omitted); ``VISION_API_*`` variables apply on top.
    """
    try:
        settings = Settings.load(config_path)
    except ValueError as exc:
        print(f"vision-api worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level, settings.server.log_format)
    if not settings.jobs.redis_url:
        print(
            "vision-api worker: no job queue to work on. Set VISION_API_REDIS_URL (e.g. "
            "redis://localhost:6379/0) to the Redis the API uses.",
            file=sys.stderr,
        )
        return 2
    from service.jobs.tasks import WorkerRuntime, supervise
    from service.wiring import build_worker_inference

    runtime = WorkerRuntime(settings, build=build_worker_inference)

    async def main() -> None:
        try:
            await supervise(runtime, handle_signals=True)
        finally:
            await runtime.close()

    asyncio.run(main())
    return 0
