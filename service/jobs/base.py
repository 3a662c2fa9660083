"""The job backend interface."""

from __future__ import annotations

import abc


class JobBackend(abc.ABC):
    """Where async jobs are queued, run and kept."""

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start workers or connections (called from the app's lifespan)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop workers and close connections."""

    @abc.abstractmethod
    async def health(self) -> tuple[bool, str | None]:
        """Whether the backend answers, and why not."""
