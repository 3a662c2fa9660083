"""SAM3 ``image_id`` items in jobs on Redis: found by the worker that shares the API's pool, a
clear failure on a worker in another pool. The apps run under uvicorn in this event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import REDIS_URL, serve_app, settings_for, wait_for  # noqa: E402

from tests.conftest import asset_b64  # noqa: E402

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix
OPTIONS: dict[str, Any] = {"prompts": ["cat", "sky"], "threshold": 0.2, "output_format": "rle"}


async def test_the_embedded_worker_finds_the_api_s_embeddings(
    jobs_config: Path, redis_prefix: str
) -> None:
    settings = settings_for(
        jobs_config, redis_url=REDIS_URL, redis_key_prefix=redis_prefix, embedded_worker=1
    )
    async with serve_app(settings) as client:
        embedded = await client.post(
            "/inference/sam3/embed", json={"images": [asset_b64("coffee.png")]}
        )
        assert embedded.status_code == 200, embedded.text
        (image_id,) = embedded.json()["image_ids"]
        body = {"images": [{"image_id": image_id}], **OPTIONS}
        submitted = await client.post("/jobs/submit/sam3", json=body)
        assert submitted.status_code == 202, submitted.text
        job = await wait_for(client, submitted.json()["job_id"])
        assert job["status"] == "completed", job["error"]
        synchronous = await client.post(
            "/inference/sam3", json={"images": [asset_b64("coffee.png")], **OPTIONS}
        )
        assert job["result"]["results"] == synchronous.json()["results"]


async def test_a_worker_in_another_pool_fails_the_job_with_the_reason(
    jobs_config: Path, redis_prefix: str
) -> None:
    queue = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix}
    api = settings_for(jobs_config, embedded_worker=0, **queue)
    worker = settings_for(jobs_config, embedded_worker=1, **queue)
    async with serve_app(api) as client, serve_app(worker):
        embedded = await client.post(
            "/inference/sam3/embed", json={"images": [asset_b64("coffee.png")]}
        )
        (image_id,) = embedded.json()["image_ids"]
        submitted = await client.post(
            "/jobs/submit/sam3", json={"images": [{"image_id": image_id}], **OPTIONS}
        )
        assert submitted.status_code == 202, submitted.text
        job = await wait_for(client, submitted.json()["job_id"])
    assert job["status"] == "failed"
    assert f"image_id {image_id!r} is not in the cache" in job["error"]
