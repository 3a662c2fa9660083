"""Async jobs over HTTP on both backends: the in-process one, and Redis (arq) with the API's
embedded worker. The app runs under uvicorn in the test's event loop with tiny real models."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import (  # noqa: E402
    BODY,
    BROKEN_BODY,
    REDIS_URL,
    free_port,
    serve_app,
    settings_for,
    wait_for,
)

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``VISION_API_*`` settings selecting a backend (redis: this test's own key prefix)."""
    if request.param == "memory":
        return {"redis_url": ""}
    prefix = request.getfixturevalue("redis_prefix")
    return {"redis_url": REDIS_URL, "redis_key_prefix": prefix, "embedded_worker": "1"}


def _time(value: str) -> datetime:
    assert value.endswith("Z") or value.endswith("+00:00"), value  # ISO 8601 UTC
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _embeddings(response: dict[str, Any]) -> np.ndarray:
    return np.array([r["embedding"] for r in response["results"]])


async def test_lifecycle_matches_the_synchronous_endpoint(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    settings = settings_for(jobs_config, job_concurrency=1, debug_job_delay_s=0.5, **backend)
    async with serve_app(settings) as client:
        sync = (await client.post("/inference/dinov3", json=BODY)).json()
        first = await client.post("/jobs/submit/dinov3", json=BODY)
        second = await client.post("/jobs/submit/dinov3", json=BODY)
        assert first.status_code == second.status_code == 202, first.text
        accepted = second.json()
        assert set(accepted) == {"job_id", "model_type", "status", "created_at"}
        assert accepted["status"] == "pending" and accepted["model_type"] == "dinov3"

        seen: list[str] = []
        job = await wait_for(client, accepted["job_id"], seen=seen)
        # one job at a time: the second waits while the first runs
        assert seen == ["pending", "running", "completed"], seen
        assert set(job) >= {
            "job_id",
            "model_type",
            "status",
            "created_at",
            "started_at",
            "finished_at",
            "result",
            "error",
        }
        assert job["error"] is None and job["attempts"] == 1
        created, started, finished = (
            _time(job[k]) for k in ("created_at", "started_at", "finished_at")
        )
        assert created <= started <= finished
        assert (finished - started).total_seconds() >= 0.5  # the delay ran while "running"

        result = job["result"]
        assert {k: result[k] for k in ("model_type", "variant", "engine", "device")} == {
            k: sync[k] for k in ("model_type", "variant", "engine", "device")
        }
        assert set(result["timings_ms"]) == set(sync["timings_ms"])
        np.testing.assert_allclose(_embeddings(result), _embeddings(sync), rtol=1e-6, atol=1e-7)
        assert result["results"] == sync["results"]  # same code, same input: the same numbers
        assert (await wait_for(client, first.json()["job_id"]))["status"] == "completed"


async def test_a_job_that_cannot_load_its_model_fails_with_the_reason(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    async with serve_app(settings_for(jobs_config, **backend)) as client:
        submitted = await client.post("/jobs/submit/dinov3", json=BROKEN_BODY)
        assert submitted.status_code == 202, submitted.text
        job = await wait_for(client, submitted.json()["job_id"])
        assert job["status"] == "failed" and job["result"] is None
        assert "/nonexistent/dinov3-checkpoint" in job["error"]
        assert "Traceback" not in job["error"]
        assert job["started_at"] is not None and job["finished_at"] is not None
        # the synchronous endpoint fails the same way: the job's error is its detail
        sync = await client.post("/inference/dinov3", json=BROKEN_BODY)
        assert sync.status_code >= 400 and sync.json()["detail"] == job["error"]


async def test_delete_cancels_pending_removes_finished_and_404s_unknown(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    settings = settings_for(jobs_config, job_concurrency=1, debug_job_delay_s=1.0, **backend)
    async with serve_app(settings) as client:
        finished = (await client.post("/jobs/submit/dinov3", json=BROKEN_BODY)).json()["job_id"]
        await wait_for(client, finished)
        running = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
        pending = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
        await wait_for(client, running, ("running",))
        assert (await client.get(f"/jobs/{pending}")).json()["status"] == "pending"

        for job_id in (pending, finished, running):
            deleted = await client.delete(f"/jobs/{job_id}")
            assert deleted.status_code == 204, deleted.text
            gone = await client.get(f"/jobs/{job_id}")
            assert gone.status_code == 404 and "Unknown job" in gone.json()["detail"]
        assert (await client.delete(f"/jobs/{pending}")).status_code == 404
        assert (await client.delete("/jobs/no-such-job")).status_code == 404
        assert (await client.get("/jobs/no-such-job")).status_code == 404

        # the cancelled and the aborted jobs never come back, and a new job still runs
        await asyncio.sleep(2.5)
        listing = (await client.get("/jobs")).json()
        assert listing == {"jobs": [], "total": 0}
        after = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
        assert (await wait_for(client, after))["status"] == "completed"


async def test_list_newest_first_with_status_filter_and_limit(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    async with serve_app(settings_for(jobs_config, job_concurrency=2, **backend)) as client:
        ids = []
        for body in (BODY, BROKEN_BODY, BODY, BROKEN_BODY, BODY):
            ids.append((await client.post("/jobs/submit/dinov3", json=body)).json()["job_id"])
            await asyncio.sleep(0.01)  # distinct creation times (ms resolution in Redis)
        for job_id in ids:
            await wait_for(client, job_id)

        listing = (await client.get("/jobs")).json()
        assert listing["total"] == 5
        assert [j["job_id"] for j in listing["jobs"]] == ids[::-1]
        assert all("result" not in j for j in listing["jobs"])
        assert {j["status"] for j in listing["jobs"]} == {"completed", "failed"}

        failed = (await client.get("/jobs", params={"status": "failed"})).json()
        assert failed["total"] == 2
        assert [j["job_id"] for j in failed["jobs"]] == [ids[3], ids[1]]
        assert all(j["error"] for j in failed["jobs"])

        limited = (await client.get("/jobs", params={"status": "completed", "limit": 2})).json()
        assert limited["total"] == 3 and [j["job_id"] for j in limited["jobs"]] == [ids[4], ids[2]]
        assert (await client.get("/jobs", params={"status": "pending"})).json()["total"] == 0

        assert (await client.get("/jobs", params={"status": "done"})).status_code == 400
        assert (await client.get("/jobs", params={"limit": 0})).status_code == 400


async def test_finished_jobs_are_gone_after_the_retention_time(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    async with serve_app(settings_for(jobs_config, job_retention_s=1, **backend)) as client:
        job_id = (await client.post("/jobs/submit/dinov3", json=BROKEN_BODY)).json()["job_id"]
        job = await wait_for(client, job_id)
        assert job["status"] == "failed"
        assert (await client.get("/jobs")).json()["total"] == 1
        deadline = time.monotonic() + 5
        while (await client.get(f"/jobs/{job_id}")).status_code == 200:
            assert time.monotonic() < deadline, "still there 5 s after a 1 s retention"
            await asyncio.sleep(0.1)
        assert (await client.get(f"/jobs/{job_id}")).status_code == 404
        assert (await client.get("/jobs")).json() == {"jobs": [], "total": 0}


async def test_a_full_queue_is_a_503_with_retry_after(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    settings = settings_for(
        jobs_config, job_concurrency=1, debug_job_delay_s=1.0, max_pending_jobs=2, **backend
    )
    async with serve_app(settings) as client:
        accepted = [await client.post("/jobs/submit/dinov3", json=BODY) for _ in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        refused = await client.post("/jobs/submit/dinov3", json=BODY)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "queue is full" in refused.json()["detail"]
        assert (await client.get("/jobs")).json()["total"] == 2  # nothing queued
        for response in accepted:
            await wait_for(client, response.json()["job_id"])
        again = await client.post("/jobs/submit/dinov3", json=BODY)
        assert again.status_code == 202, "room again once the queue drained"


async def test_bad_input_is_a_400_at_submit_and_nothing_is_queued(
    jobs_config: Path, backend: dict[str, Any], redis_client: redis.Redis
) -> None:
    async with serve_app(settings_for(jobs_config, **backend)) as client:
        bodies: list[bytes] = [
            b'{"images": [], "pooling": "cls"}',
            b'{"images": ["not base64!"], "pooling": "cls"}',
            b'{"images": ["aGVsbG8="], "pooling": "cls"}',  # base64 of "hello": not an image
            b'{"images": [{"dat": "x"}]}',
            b'{"images": ["x"], "pooling": "max"}',
            b'{"images": ["x"], "poolin": "cls"}',
            b'{"images": "x"',
            b"[1, 2]",
        ]
        for body in bodies:
            sync = await client.post(
                "/inference/dinov3", content=body, headers={"content-type": "application/json"}
            )
            job = await client.post(
                "/jobs/submit/dinov3", content=body, headers={"content-type": "application/json"}
            )
            assert job.status_code == sync.status_code == 400, (body, job.text, sync.text)
            assert job.json() == sync.json(), body  # the same detail (and errors) as sync
        empty = await client.post("/jobs/submit/dinov3", content=b"")
        assert empty.status_code == 400 and "body is empty" in empty.json()["detail"]

        too_many = {"images": BODY["images"] * 17, "pooling": "cls"}
        assert (await client.post("/jobs/submit/dinov3", json=too_many)).status_code == 413
        unknown_type = await client.post("/jobs/submit/nonesuch", json=BODY)
        assert unknown_type.status_code == 404 and "nonesuch" in unknown_type.json()["detail"]
        unknown_variant = await client.post("/jobs/submit/dinov3", json={**BODY, "variant": "xl"})
        assert unknown_variant.status_code == 404

        assert (await client.get("/jobs")).json() == {"jobs": [], "total": 0}
        if backend["redis_url"]:
            prefix = backend["redis_key_prefix"]
            assert redis_client.zcard(f"{prefix}:queue") == 0
            assert redis_client.zcard(f"{prefix}:jobs") == 0


async def test_an_alias_is_accepted_and_answered_with_the_canonical_name(
    jobs_config: Path,
) -> None:
    async with serve_app(settings_for(jobs_config, redis_url="")) as client:
        body = {"images": BODY["images"], "prompts": ["a cat"]}
        submitted = await client.post("/jobs/submit/grounding_dino", json=body)
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["model_type"] == "grounding-dino"
        job = await wait_for(client, submitted.json()["job_id"])
        assert job["status"] == "completed", job["error"]
        assert job["result"]["model_type"] == "grounding-dino"


async def test_unreachable_redis_is_a_503_on_jobs_only(jobs_config: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = settings_for(jobs_config, redis_url=closed, embedded_worker=1)
    async with serve_app(settings) as client:
        for method, path, body in [
            ("POST", "/jobs/submit/dinov3", BODY),
            ("GET", "/jobs", None),
            ("GET", "/jobs/some-id", None),
            ("DELETE", "/jobs/some-id", None),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert "unreachable" in response.json()["detail"], response.text
            assert int(response.headers["retry-after"]) > 0
        started = time.monotonic()
        health = await client.get("/health")
        assert time.monotonic() - started < 3
        assert health.status_code == 200
        jobs = health.json()["jobs"]
        assert jobs["backend"] == "redis" and jobs["ok"] is False and jobs["detail"]
        sync = await client.post("/inference/dinov3", json=BODY)
        assert sync.status_code == 200 and len(sync.json()["results"]) == 1
        # bad input is still a 400 (validation comes first), not a 503
        assert (await client.post("/jobs/submit/dinov3", json={"images": []})).status_code == 400


async def test_a_job_over_its_timeout_fails_with_the_reason(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    settings = settings_for(jobs_config, job_timeout_s=0.5, debug_job_delay_s=2, **backend)
    async with serve_app(settings) as client:
        job_id = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
        job = await wait_for(client, job_id, timeout_s=15)
        assert job["status"] == "failed" and job["result"] is None
        assert "longer than job_timeout_s (0.5 s)" in job["error"], job["error"]
        assert job["finished_at"] is not None and job["attempts"] == 1
        failed = (await client.get("/jobs", params={"status": "failed"})).json()
        assert [j["job_id"] for j in failed["jobs"]] == [job_id]


async def test_a_large_jpeg_gets_one_answer_however_it_arrives(
    jobs_config: Path, backend: dict[str, Any]
) -> None:
    """The request that loads the model and a job decode eagerly, a request to the loaded
    model decodes where it is pre-processed: a large JPEG is decoded small all three ways."""
    import base64
    import io

    from PIL import Image

    photo = Image.open(Path(__file__).parents[1] / "assets" / "astronaut.png").convert("RGB")
    buffer = io.BytesIO()
    photo.resize((2048, 1536), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=92)
    body = {**BODY, "images": [base64.b64encode(buffer.getvalue()).decode()]}
    settings = settings_for(jobs_config, **backend)
    async with serve_app(settings) as client:
        loading = (await client.post("/inference/dinov3", json=body)).json()
        loaded = (await client.post("/inference/dinov3", json=body)).json()
        submitted = await client.post("/jobs/submit/dinov3", json=body)
        assert submitted.status_code == 202, submitted.text
        job = await wait_for(client, submitted.json()["job_id"])
        assert job["status"] == "completed", job
        for answer in (loading, job["result"]):
            np.testing.assert_allclose(_embeddings(answer), _embeddings(loaded), atol=1e-6)
