"""Request rate limits: a fixed-window counter per caller, in memory or shared through Redis.

A window is aligned on the clock (``floor(now / period)``), so every replica agrees on which
window a request falls in without talking to the others; the Redis counter is one ``INCR``
plus ``EXPIRE`` in a transaction, so concurrent replicas never lose a count. A fixed window
lets a caller burst up to twice the rate across a window boundary; that is the price of one
round trip per request.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PERIODS_S = {"second": 1, "minute": 60, "hour": 3600}
RATE = re.compile(r"^\s*(?P<count>\d+)\s*/\s*(?P<period>second|minute|hour)\s*$")
# A Redis that answers slower than this is treated as down: the limiter must not become the
# slowest part of every request.
REDIS_TIMEOUT_S = 0.5
# How often the "Redis is unreachable" warning may repeat while the outage lasts.
WARN_EVERY_S = 30.0


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"120/minute"`` (also ``/second`` and ``/hour``).

        Raises:
            ValueError: Not of that form, or a count of 0.
        """
        match = RATE.match(text)
        if not match or int(match["count"]) < 1:
            raise ValueError(
                f"Invalid rate limit {text!r}: expected COUNT/second, COUNT/minute or "
                "COUNT/hour with COUNT >= 1, e.g. 120/minute."
            )
        return cls(int(match["count"]), PERIODS_S[match["period"]])


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go ahead, and if not, in how many seconds it may retry."""

    allowed: bool
    retry_after_s: int = 0


class RateLimiter(Protocol):
    """Counts one request of ``identity`` against its rate."""

    rate: Rate

    async def hit(self, identity: str) -> Verdict:
        """Count a request; refuse it when the window's count is over the rate."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _window(rate: Rate, now: float) -> tuple[int, int]:
    """The window's index and the whole seconds until the next one starts (at least 1)."""
    index = int(now // rate.period_s)
    return index, max(1, math.ceil((index + 1) * rate.period_s - now))


class MemoryRateLimiter:
    """Counts in this process (each uvicorn worker and replica keeps its own counts)."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._index = -1
        self._counts: dict[str, int] = {}

    async def hit(self, identity: str) -> Verdict:
        """Count a request in the current window."""
        index, retry_after_s = _window(self.rate, time.time())
        if index != self._index:  # a new window: the old counts can never matter again
            self._index, self._counts = index, {}
        count = self._counts[identity] = self._counts.get(identity, 0) + 1
        return Verdict(count <= self.rate.count, retry_after_s)

    async def close(self) -> None:
        """Nothing to release."""


class RedisRateLimiter:
    """Counts in Redis, so every replica and worker process enforces one limit.

    Args:
        rate: The limit.
        url: The Redis URL (the job queue's ``VISION_API_REDIS_URL``).
        prefix: Key prefix (``VISION_API_REDIS_KEY_PREFIX``), shared by the replicas.
    """

    def __init__(self, rate: Rate, url: str, prefix: str) -> None:
        self.rate = rate
        self.prefix = prefix
        self.redis = Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        self._warned_at = -math.inf

    async def hit(self, identity: str) -> Verdict:
        """Count a request in the current window, shared by every process using this Redis."""
        index, retry_after_s = _window(self.rate, time.time())
        key = f"{self.prefix}:ratelimit:{identity}:{index}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self.rate.period_s + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            # Fail open: the limit protects capacity, and refusing every request while Redis
            # is down would turn a Redis outage into an outage of the whole API. The job
            # endpoints still report Redis's state on their own (/health, 503s).
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                log.warning(
                    "rate limit not enforced: Redis is unreachable (%s); requests are let "
                    "through until it answers",
                    type(exc).__name__,
                )
            return Verdict(True)
        return Verdict(int(count) <= self.rate.count, retry_after_s)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()


def build_rate_limiter(
    rate_limit: str | None, redis_url: str | None, prefix: str
) -> RateLimiter | None:
    """The limiter the settings ask for: none, in Redis when a URL is set, else in memory.

    Raises:
        ValueError: ``rate_limit`` is not of the form ``COUNT/period``.
    """
    if not rate_limit:
        return None
    rate = Rate.parse(rate_limit)
    if redis_url:
        return RedisRateLimiter(rate, redis_url, prefix)
    return MemoryRateLimiter(rate)
