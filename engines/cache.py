"""A thread-safe cache bounded by bytes: least recently used out first, unused ones expire.

Values are whatever a family keeps between requests (SAM3: an image's embedding, on the device
the model runs on); the caller says how many bytes each takes. An entry lives until it is the
least recently used one when room is needed, or until ``ttl_s`` passes without a use. Expired
entries are dropped at the cache's next access (any lookup, store or :meth:`LruCache.stats`),
so an idle cache keeps them until the next request or ``/models/status``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from engines.base import CacheStats

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    size_bytes: int
    last_used: float


class LruCache(Generic[K, V]):
    """Keys → values under a byte budget, with true LRU eviction and a TTL from last use.

    Every method takes one lock, so lookups and stores from several threads are safe; values
    are handed out as they are (not copied).

    Args:
        budget_bytes: The most bytes the entries may take together; 0 keeps nothing.
        ttl_s: Seconds an entry is kept after its last use; None keeps it until evicted.
        clock: Monotonic seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self,
        budget_bytes: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, not {budget_bytes}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 or None, not {ttl_s}")
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        # Oldest use first: the eviction order and, as uses only move forward in time, also
        # the expiry order.
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: K, *, count: bool = True) -> V | None:
        """The value of ``key``, now the most recently used; None (a miss) when absent.

        ``count=False`` leaves the hit and miss counters alone (a second look for a lookup
        already counted).
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                self._misses += count
                return None
            entry.last_used = now
            self._entries.move_to_end(key)
            self._hits += count
            return entry.value

    def put(self, key: K, value: V, size_bytes: int) -> bool:
        """Store ``value`` as the most recently used, evicting the least recent for room.

        A value larger than the whole budget is not kept, and nothing is evicted for it.

        Returns:
            Whether the value is now in the cache.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, not {size_bytes}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size_bytes
            if size_bytes > self.budget_bytes:
                return False
            while self._bytes + size_bytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size_bytes
                self._evictions += 1
            self._entries[key] = _Entry(value, size_bytes, now)
            self._bytes += size_bytes
            return True

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held (not expired); neither a use nor a hit or miss."""
        with self._lock:
            self._expire(self._clock())
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (counters stay: they describe the cache's whole life)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def reset(self) -> None:
        """Drop every entry and zero the counters: the cache as new."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._hits = self._misses = self._evictions = 0

    def stats(self) -> CacheStats:
        """Entries, bytes and budget now; hits, misses and evictions so far."""
        with self._lock:
            self._expire(self._clock())
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                budget_bytes=self.budget_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    def _expire(self, now: float) -> None:
        """Drop entries unused for ``ttl_s`` (with the lock held): they are all at the front."""
        if self.ttl_s is None:
            return
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last_used < self.ttl_s:
                return
            del self._entries[key]
            self._bytes -= entry.size_bytes
            self._evictions += 1
