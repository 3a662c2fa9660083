"""A bounded loopback burst at 4x the in-flight limit: refused cleanly, memory flat, recovered.

The server runs with ``VISION_API_MAX_IN_FLIGHT_PER_MODEL=4`` and a 200 ms batch window (a real
setting: each forward waits for its batch to fill), so requests stay in flight long enough for
16 concurrent clients to exceed the limit on any machine. Every answer must be a 200, a 429 or
a 503 with ``Retry-After``; the server's RSS must not grow with the burst; afterwards a normal
request succeeds. 96 requests, loopback only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import asset_b64, free_port, start_server, stop_server

IN_FLIGHT_LIMIT = 4
CLIENTS = 4 * IN_FLIGHT_LIMIT
ROUNDS = 6
IMAGES_PER_REQUEST = 4
# The burst may hold CLIENTS requests' bodies and images at once (a few MB); anything near this
# bound would mean work or memory piling up beyond the limit.
RSS_GROWTH_LIMIT_MB = 256


@pytest.fixture(scope="module")
def loaded_server(tiny_config: Path) -> Iterator[tuple[str, int]]:
    """The base URL and the PID of ``vision-api serve`` with a small in-flight limit."""
    port = free_port()
    proc = start_server(
        ["serve", "--config", str(tiny_config), "--port", str(port)],
        {
            "VISION_API_REDIS_URL": "",
            "VISION_API_MAX_IN_FLIGHT_PER_MODEL": str(IN_FLIGHT_LIMIT),
            "VISION_API_MAX_BATCH_DELAY_MS": "200",
            "VISION_API_LOG_LEVEL": "warning",  # no access log into the unread pipe
        },
        port,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_server(proc)


async def _burst(url: str, body: dict[str, object]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client() -> list[httpx.Response]:
            return [await client.post("/inference/dinov3", json=body) for _ in range(ROUNDS)]

        per_client = await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return [response for responses in per_client for response in responses]


def test_burst_at_four_times_the_in_flight_limit(loaded_server: tuple[str, int]) -> None:
    url, pid = loaded_server
    body = {"images": [asset_b64("chelsea.jpg")] * IMAGES_PER_REQUEST}
    warm = httpx.post(f"{url}/inference/dinov3", json=body, timeout=120)
    assert warm.status_code == 200, warm.text  # model loaded, threads started
    server = psutil.Process(pid)
    rss_before_mb = server.memory_info().rss / 2**20

    responses = asyncio.run(_burst(url, body))

    rss_after_mb = server.memory_info().rss / 2**20
    statuses = Counter(r.status_code for r in responses)
    assert len(responses) == CLIENTS * ROUNDS
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0, statuses
    assert statuses[503] > 0, f"{CLIENTS} clients never exceeded the limit: {statuses}"
    for refused in (r for r in responses if r.status_code in (429, 503)):
        assert int(refused.headers["Retry-After"]) >= 1
        assert "busy" in refused.json()["detail"] or refused.status_code == 429
        assert "Traceback" not in refused.text
    assert rss_after_mb - rss_before_mb < RSS_GROWTH_LIMIT_MB, (rss_before_mb, rss_after_mb)

    # Recovery: nothing is left in flight, a normal request succeeds at once.
    after = httpx.post(f"{url}/inference/dinov3", json=body, timeout=60)
    assert after.status_code == 200, after.text
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    print(f"burst: {dict(statuses)}; RSS {rss_before_mb:.0f} -> {rss_after_mb:.0f} MB")
