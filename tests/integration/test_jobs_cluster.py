"""The Redis deployment as separate processes: ``vision-api serve`` replicas and
``vision-api worker`` processes on one Redis; workers stopped or killed mid-job."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import (  # noqa: E402
    BODY,
    BROKEN_BODY,
    REDIS_URL,
    WORKER_READY,
    Process,
    free_port,
    new_prefix,
    remove_prefix,
    serve_app,
    settings_for,
    start_api,
    start_worker,
    wait_for,
    wait_healthy,
)

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix
pytestmark = pytest.mark.integration


class Cluster:
    """Two API processes and two workers sharing one Redis key prefix."""

    def __init__(self, apis: list[str], workers: list[Process]) -> None:
        self.apis = apis
        self.workers = workers


@pytest.fixture(scope="module")
def cluster(
    jobs_config: Path, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """``vision-api serve`` ×2 and ``vision-api worker`` ×2, started together."""
    prefix = new_prefix()
    logs = tmp_path_factory.mktemp("cluster")
    env = {"VISION_API_REDIS_URL": REDIS_URL, "VISION_API_REDIS_KEY_PREFIX": prefix}
    worker_env = {**env, "VISION_API_JOB_CONCURRENCY": "4"}
    started = [start_api(jobs_config, env, logs / f"api{i}.log") for i in range(2)]
    workers = [start_worker(jobs_config, worker_env, logs / f"worker{i}.log") for i in range(2)]
    try:
        for process, url in started:
            wait_healthy(url, process)
        for worker in workers:
            worker.wait_for_line(WORKER_READY)
        yield Cluster([url for _, url in started], workers)
    finally:
        api_codes = [p.stop() for p, _ in started]
        worker_codes = [w.stop() for w in workers]
        remove_prefix(redis_client, prefix)
    # uvicorn re-raises the signal after its graceful shutdown; arq returns
    assert set(api_codes) <= {0, -signal.SIGTERM} and worker_codes == [0, 0]


def _ran(worker: Process, job_id: str) -> int:
    """How many times ``worker`` logged the end of ``job_id``."""
    return worker.text().count(f"{job_id}:run_inference_job ●")


async def _runs(workers: list[Process], job_id: str, timeout_s: float = 15) -> int:
    """How many times ``workers`` together logged the end of ``job_id``, once at least one has:
    the job's record says ``completed`` from inside the job function, and arq logs the end only
    after the function returns, so a poll of the record can see the job done before its log line
    is written."""
    deadline = time.monotonic() + timeout_s
    while (runs := sum(_ran(w, job_id) for w in workers)) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return runs


async def test_submit_on_one_api_poll_and_list_on_the_other(cluster: Cluster) -> None:
    one, other = (httpx.AsyncClient(base_url=u, timeout=30) for u in cluster.apis)
    async with one, other:
        ids = []
        for body in (BODY, BROKEN_BODY, BODY):
            submitted = await one.post("/jobs/submit/dinov3", json=body)
            assert submitted.status_code == 202, submitted.text
            ids.append(submitted.json()["job_id"])
        jobs = [await wait_for(other, job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["completed", "failed", "completed"]
        assert "/nonexistent/dinov3-checkpoint" in jobs[1]["error"]

        sync = (await one.post("/inference/dinov3", json=BODY)).json()
        np.testing.assert_allclose(
            np.array(jobs[0]["result"]["results"][0]["embedding"]),
            np.array(sync["results"][0]["embedding"]),
            rtol=1e-6,
            atol=1e-7,
        )
        # a worker computed them (the APIs only enqueue)
        for job_id in ids:
            assert await _runs(cluster.workers, job_id) == 1

        listed = (await other.get("/jobs", params={"limit": 3})).json()
        assert [j["job_id"] for j in listed["jobs"]] == ids[::-1]
        assert (await one.get("/jobs", params={"status": "failed"})).json()["jobs"][0][
            "job_id"
        ] == ids[1]

        assert (await other.delete(f"/jobs/{ids[0]}")).status_code == 204
        assert (await one.get(f"/jobs/{ids[0]}")).status_code == 404

        health = (await one.get("/health")).json()
        assert health["jobs"] == {"backend": "redis", "ok": True, "detail": None}


async def test_200_jobs_at_once_with_two_workers(cluster: Cluster) -> None:
    clients = [httpx.AsyncClient(base_url=u, timeout=60) for u in cluster.apis]
    limit = asyncio.Semaphore(16)

    async def submit(i: int) -> str:
        async with limit:
            response = await clients[i % 2].post("/jobs/submit/dinov3", json=BODY)
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    try:
        ids = await asyncio.gather(*(submit(i) for i in range(200)))
        assert len(set(ids)) == 200
        deadline = time.monotonic() + 150
        while True:
            done = (
                await clients[1].get("/jobs", params={"status": "completed", "limit": 1000})
            ).json()
            if set(ids) <= {j["job_id"] for j in done["jobs"]}:
                break
            assert time.monotonic() < deadline, f"{done['total']} completed after 150 s"
            await asyncio.sleep(0.5)

        listing = (await clients[0].get("/jobs", params={"limit": 1000})).json()
        listed = [j["job_id"] for j in listing["jobs"]]
        assert len(listed) == len(set(listed)) == listing["total"]  # no duplicates
        assert set(ids) <= set(listed)  # none lost
        mine = [j for j in listing["jobs"] if j["job_id"] in set(ids)]
        assert all(j["status"] == "completed" and j["attempts"] == 1 for j in mine)
        created = [
            datetime.fromisoformat(j["created_at"].replace("Z", "+00:00")) for j in listing["jobs"]
        ]
        assert created == sorted(created, reverse=True)  # newest first

        runs = {job_id: await _runs(cluster.workers, job_id) for job_id in ids}
        assert set(runs.values()) == {1}, "each job ran exactly once"
        per_worker = [sum(_ran(w, job_id) for job_id in ids) for w in cluster.workers]
        assert all(n > 0 for n in per_worker), per_worker  # both workers took jobs
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_worker_stopped_mid_job_does_not_lose_it(
    jobs_config: Path, redis_prefix: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL: the job stays ``running`` until its in-progress key expires (job_timeout_s +
    10 s), then the next worker runs it again. SIGTERM: arq cancels it and puts it back on the
    queue at once (``pending``); the worker exits cleanly; the next worker runs it."""
    timeout_s = 4
    env = {
        "VISION_API_REDIS_URL": REDIS_URL,
        "VISION_API_REDIS_KEY_PREFIX": redis_prefix,
        "VISION_API_JOB_TIMEOUT_S": str(timeout_s),
    }
    first = start_worker(
        jobs_config, {**env, "VISION_API_DEBUG_JOB_DELAY_S": "2.5"}, tmp_path / "first.log"
    )
    second: Process | None = None
    settings = settings_for(
        jobs_config, redis_url=REDIS_URL, redis_key_prefix=redis_prefix, job_timeout_s=timeout_s
    )
    try:
        await asyncio.to_thread(first.wait_for_line, WORKER_READY)
        async with serve_app(settings) as client:
            job_id = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
            running = await wait_for(client, job_id, ("running",), timeout_s=10)
            code = await asyncio.to_thread(first.stop, sig)
            stopped_at = time.monotonic()
            after = (await client.get(f"/jobs/{job_id}")).json()
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL
                # its claim outlives it: running until the in-progress key expires
                assert after["status"] == "running"
            else:
                assert code == 0, first.text()[-2000:]
                assert "cancelled, will be run again" in first.text()
                assert after["status"] == "pending" and after["started_at"] is None

            second = start_worker(
                jobs_config, {**env, "VISION_API_PRELOAD": "dinov3"}, tmp_path / "second.log"
            )
            seen = [after["status"]]
            job = await wait_for(client, job_id, timeout_s=timeout_s + 10 + 40, seen=seen)
            waited_s = time.monotonic() - stopped_at
            assert job["status"] == "completed", job
            assert job["attempts"] == 2 and job["result"] is not None
            assert job["started_at"] > running["started_at"]  # the second attempt's start
            assert await _runs([second], job_id) == 1 and "try=2" in second.text()
            if sig == signal.SIGKILL:
                # Running until its claim expires, then pending only until the next worker's
                # poll takes it (within its poll delay): polls on a loaded machine can miss that.
                assert seen[0] == "running" and set(seen[1:-1]) <= {"pending", "running"}, seen
                assert waited_s > timeout_s + 5, waited_s
            assert seen[-1] == "completed", seen  # (its second run may be too quick to see)
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[[], subprocess.Popen[bytes]]]]:
    """A Redis of this test's own, which it may stop and start again: its URL, its starter."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("needs the redis-server executable")
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [
                executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(server)
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return server
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    yield f"redis://127.0.0.1:{port}/0", start
    for server in started:
        server.terminate()
        server.wait()


async def test_a_worker_outlives_a_redis_restart(
    jobs_config: Path,
    tmp_path: Path,
    private_redis: tuple[str, Callable[[], subprocess.Popen[bytes]]],
) -> None:
    url, start_redis = private_redis
    server = start_redis()
    worker = start_worker(jobs_config, {"VISION_API_REDIS_URL": url}, tmp_path / "worker.log")
    try:
        await asyncio.to_thread(worker.wait_for_line, WORKER_READY)
        async with serve_app(settings_for(jobs_config, redis_url=url)) as client:
            before = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
            assert (await wait_for(client, before))["status"] == "completed"

            server.terminate()
            await asyncio.to_thread(server.wait)
            assert (await client.get(f"/jobs/{before}")).status_code == 503
            assert (await client.get("/health")).json()["jobs"]["ok"] is False
            await asyncio.sleep(1.5)  # the worker polls every 0.5 s: it notices

            start_redis()  # empty: what was in it is gone
            assert (await client.get("/health")).json()["jobs"]["ok"] is True
            after = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
            assert (await wait_for(client, after, timeout_s=60))["status"] == "completed"
        assert worker.proc.poll() is None and "lost Redis" in worker.text()
    finally:
        assert worker.stop() == 0
