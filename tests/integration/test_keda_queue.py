"""What KEDA's ``redis`` scaler (deploy/k8s/worker-scaledobject.yaml) reads from a real queue.

The scaler measures ``listName`` by the key's type: ZCARD for a sorted set, SCARD for a set,
HLEN for a hash, LLEN for a list or a missing key. The same rule, run as a Lua script on the
real Redis after jobs are submitted through the real API (no worker running), must count
exactly the pending jobs: arq's queue is a sorted set, and the ScaledObject names its key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import yaml

from service.settings import JobSettings

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import BODY, REDIS_URL, serve_app, settings_for  # noqa: E402

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix

SCALEDOBJECT = Path(__file__).parents[2] / "deploy" / "k8s" / "worker-scaledobject.yaml"
# KEDA's rule for the length of `listName`, by the key's type.
QUEUE_LENGTH = """
local kind = redis.call('TYPE', KEYS[1]).ok
local count = {zset = 'ZCARD', set = 'SCARD', hash = 'HLEN', list = 'LLEN', none = 'LLEN'}
return redis.call(count[kind], KEYS[1])
"""
JOBS = 5


async def test_the_scaler_counts_the_pending_jobs(
    jobs_config: Path, redis_client: redis.Redis, redis_prefix: str
) -> None:
    trigger = yaml.safe_load(SCALEDOBJECT.read_text())["spec"]["triggers"][0]["metadata"]
    assert trigger["listName"] == f"{JobSettings().redis_key_prefix}:queue"
    queue = f"{redis_prefix}:queue"  # the same key under this test's own prefix
    settings = settings_for(jobs_config, redis_url=REDIS_URL, redis_key_prefix=redis_prefix)
    async with serve_app(settings) as client:
        assert redis_client.eval(QUEUE_LENGTH, 1, queue) == 0
        for _ in range(JOBS):
            submitted = await client.post("/jobs/submit/dinov3", json=BODY)
            assert submitted.status_code == 202, submitted.text
        assert redis_client.type(queue) == b"zset"
        assert redis_client.eval(QUEUE_LENGTH, 1, queue) == JOBS
