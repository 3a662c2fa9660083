"""``engines.cache.LruCache``: byte budget, true LRU order, TTL from last use, counters, threads."""

from __future__ import annotations

import threading

import pytest

from engines.base import CacheStats
from engines.cache import LruCache


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_goes_first_and_a_lookup_counts_as_use() -> None:
    cache: LruCache[str, int] = LruCache(budget_bytes=30)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        assert cache.put(key, value, 10)
    assert cache.get("a") == 1  # a is now the most recent: b is the oldest
    assert cache.put("d", 4, 10)
    assert "b" not in cache
    assert [k for k in "acd" if k in cache] == ["a", "c", "d"]
    assert cache.put("e", 5, 20)  # room for 20 bytes: the two least recent, c then a, go
    assert "c" not in cache and "a" not in cache
    assert cache.get("d") == 4 and cache.get("e") == 5
    assert cache.stats().evictions == 3


def test_the_budget_counts_bytes_not_entries() -> None:
    cache: LruCache[int, str] = LruCache(budget_bytes=100)
    for key in range(10):
        cache.put(key, "x", 30)
        stats = cache.stats()
        assert stats.bytes <= 100
        assert stats.bytes == 30 * stats.entries
    assert len(cache) == 3
    assert cache.put(99, "small", 10)  # fits beside the three: nothing evicted
    assert cache.stats() == CacheStats(
        entries=4, bytes=100, budget_bytes=100, hits=0, misses=0, evictions=7
    )


def test_replacing_a_key_replaces_its_bytes() -> None:
    cache: LruCache[str, str] = LruCache(budget_bytes=50)
    cache.put("a", "old", 40)
    cache.put("a", "new", 10)
    assert cache.get("a") == "new"
    assert (cache.stats().entries, cache.stats().bytes) == (1, 10)


def test_an_item_larger_than_the_budget_is_not_kept_and_evicts_nothing() -> None:
    cache: LruCache[str, str] = LruCache(budget_bytes=50)
    cache.put("a", "small", 20)
    assert not cache.put("huge", "x", 51)
    assert "huge" not in cache and cache.get("a") == "small"
    assert cache.stats().evictions == 0
    off: LruCache[str, str] = LruCache(budget_bytes=0)
    assert not off.put("a", "x", 1)
    assert off.put("empty", "", 0)  # zero bytes fit even a zero budget


def test_ttl_counts_from_the_last_use() -> None:
    clock = Clock()
    cache: LruCache[str, int] = LruCache(budget_bytes=100, ttl_s=60, clock=clock)
    cache.put("used", 1, 10)
    cache.put("idle", 2, 10)
    clock.now += 50
    assert cache.get("used") == 1  # renewed: 60 s from now
    clock.now += 30  # idle: 80 s unused; used: 30 s
    assert "idle" not in cache
    assert cache.get("used") == 1
    clock.now += 59.9
    assert "used" in cache
    clock.now += 0.1
    assert cache.get("used") is None
    assert cache.stats() == CacheStats(
        entries=0, bytes=0, budget_bytes=100, hits=2, misses=1, evictions=2
    )


def test_expired_entries_leave_at_the_next_access_of_any_kind() -> None:
    clock = Clock()
    cache: LruCache[str, int] = LruCache(budget_bytes=100, ttl_s=10, clock=clock)
    cache.put("a", 1, 40)
    clock.now += 10
    stats = cache.stats()  # /models/status alone frees them
    assert (stats.entries, stats.bytes, stats.evictions) == (0, 0, 1)


def test_counters_hits_misses_evictions() -> None:
    cache: LruCache[str, int] = LruCache(budget_bytes=20)
    assert cache.get("a") is None
    cache.put("a", 1, 10)
    cache.put("b", 2, 10)
    assert cache.get("a") == 1 and cache.get("b") == 2 and cache.get("b") == 2
    cache.put("c", 3, 10)  # evicts a
    assert cache.get("a") is None
    assert "b" in cache and len(cache) == 2  # neither counts as a lookup
    assert cache.stats() == CacheStats(
        entries=2, bytes=20, budget_bytes=20, hits=3, misses=2, evictions=1
    )
    cache.clear()
    assert cache.stats() == CacheStats(
        entries=0, bytes=0, budget_bytes=20, hits=3, misses=2, evictions=1
    )


@pytest.mark.parametrize(("budget", "ttl"), [(-1, None), (10, 0), (10, -5)])
def test_bad_arguments_are_refused(budget: int, ttl: float | None) -> None:
    with pytest.raises(ValueError):
        LruCache(budget_bytes=budget, ttl_s=ttl)
    with pytest.raises(ValueError):
        LruCache(budget_bytes=10).put("a", 1, -1)


def test_concurrent_gets_and_puts_keep_the_books_straight() -> None:
    cache: LruCache[int, bytes] = LruCache(budget_bytes=64 * 100)
    threads, rounds, keys = 8, 2000, 200
    lookups = [0] * threads
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            for step in range(rounds):
                key = (worker * 7919 + step * 31) % keys
                value = cache.get(key)
                lookups[worker] += 1
                if value is None:
                    cache.put(key, key.to_bytes(2, "big"), 64)
                else:
                    assert value == key.to_bytes(2, "big")  # never another key's value
        except BaseException as exc:  # noqa: BLE001 - reported below, from the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == sum(lookups) == threads * rounds
    assert stats.hits > 0 and stats.evictions > 0
    assert stats.entries == 100 and stats.bytes == 64 * 100 <= stats.budget_bytes
