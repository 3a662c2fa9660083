"""``GET /jobs`` pages through Redis indexes: a page reads about ``limit`` jobs, not every
retained one. Runs against a Redis server of its own, so that its command counts are exact."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import free_port, serve_app, settings_for  # noqa: E402

from service.jobs.execution import JobOutcome  # noqa: E402
from service.jobs.redis_store import RedisJobStore  # noqa: E402

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config
COMPLETED, FAILED, PENDING = 120, 30, 6


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own (no persistence), its URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


def hash_reads(client: redis.Redis) -> int:
    """HMGET calls so far: one per job read."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def test_a_page_reads_about_limit_jobs_not_every_retained_one(
    jobs_config: Path, own_redis: str
) -> None:
    settings = settings_for(jobs_config, redis_url=own_redis, embedded_worker=0)
    client = Redis.from_url(own_redis)
    store = RedisJobStore(client, settings.jobs)
    ids: dict[str, list[str]] = {"completed": [], "failed": [], "pending": []}
    for i in range(COMPLETED + FAILED + PENDING):
        kind = "completed" if i % 5 else "failed"
        kind = "pending" if i >= COMPLETED + FAILED else kind
        job_id = f"job-{i:04d}"
        await store.create(job_id, "dinov3", b"")
        await asyncio.sleep(0.002)  # distinct creation times (ms)
        if kind != "pending":
            await store.mark_running(job_id, 1)
            await store.finish(job_id, JobOutcome(error="boom" if kind == "failed" else None))
        ids[kind].append(job_id)
    assert len(ids["completed"]) == COMPLETED and len(ids["failed"]) == FAILED
    counter = redis.Redis.from_url(own_redis)

    async with serve_app(settings) as http:
        before = hash_reads(counter)
        page = (await http.get("/jobs", params={"limit": 5})).json()
        newest = sorted(ids["pending"] + ids["completed"] + ids["failed"], reverse=True)
        assert [j["job_id"] for j in page["jobs"]] == newest[:5]
        assert page["total"] == COMPLETED + FAILED + PENDING
        assert hash_reads(counter) - before <= 5 + 8  # the page and a few spare

        before = hash_reads(counter)
        done = (await http.get("/jobs", params={"status": "completed", "limit": 3})).json()
        assert [j["job_id"] for j in done["jobs"]] == ids["completed"][::-1][:3]
        assert done["total"] == COMPLETED
        assert hash_reads(counter) - before <= 3 + 8

        before = hash_reads(counter)
        failed = (await http.get("/jobs", params={"status": "failed", "limit": 2})).json()
        assert [j["job_id"] for j in failed["jobs"]] == ids["failed"][::-1][:2]
        assert failed["total"] == FAILED and all(j["error"] == "boom" for j in failed["jobs"])
        # the unfinished jobs (which max_pending_jobs bounds), then the page
        assert hash_reads(counter) - before <= PENDING + 2 + 8

        pending = (await http.get("/jobs", params={"status": "pending", "limit": 100})).json()
        assert [j["job_id"] for j in pending["jobs"]] == ids["pending"][::-1]
        assert pending["total"] == PENDING
        assert (await http.get("/jobs", params={"status": "running"})).json()["total"] == 0

        deleted = ids["completed"][-1]
        assert (await http.delete(f"/jobs/{deleted}")).status_code == 204
        done = (await http.get("/jobs", params={"status": "completed", "limit": 1})).json()
        assert done["total"] == COMPLETED - 1
        assert done["jobs"][0]["job_id"] == ids["completed"][-2]
    await client.aclose()
    counter.close()


async def test_expired_jobs_leave_every_index(jobs_config: Path, own_redis: str) -> None:
    settings = settings_for(
        jobs_config, redis_url=own_redis, embedded_worker=0, job_retention_s=0.5
    )
    client = Redis.from_url(own_redis)
    store = RedisJobStore(client, settings.jobs)
    for job_id in ("a", "b"):
        await store.create(job_id, "dinov3", b"")
        await store.mark_running(job_id, 1)
        await store.finish(job_id, JobOutcome(error=None))
    assert (await store.counts())["completed"] == 2
    await asyncio.sleep(0.7)
    async with serve_app(settings) as http:
        assert (await http.get("/jobs")).json() == {"jobs": [], "total": 0}
    assert await store.counts() == {
        "all": 0,
        "pending": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
    }
    assert await client.zcard(store.expiry) == 0
    await client.aclose()
