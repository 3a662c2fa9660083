"""API keys, CORS and rate limits on the real app over HTTP; one limit across two replicas
sharing the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import asset_b64, free_port, server_log, start_server
from tests.integration.conftest_jobs import (  # noqa: F401 (fixtures)
    REDIS_URL,
    redis_client,
    redis_prefix,
    serve_app,
    settings_for,
)

KEY = "k-3f9c2a7e51d04b8c"
OTHER_KEY = "k-8d1e6b0a94c7f235"
FILE_KEY = "k-from-digest-file-77aa"
OPEN = ("/health", "/health/live", "/health/ready", "/docs", "/redoc", "/schema/openapi.json")
PROTECTED = [
    ("GET", "/"),
    ("GET", "/models/status"),
    ("POST", "/models/load"),
    ("POST", "/inference/dinov3"),
    ("POST", "/jobs/submit/dinov3"),
    ("GET", "/jobs"),
    ("GET", "/jobs/anything"),
    ("DELETE", "/jobs/anything"),
    ("GET", "/metrics"),
]


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "api key" in response.json()["detail"].lower()
    assert response.headers["x-request-id"]


async def until_window_has(seconds: float, period_s: int) -> None:
    """Wait for a fresh fixed window when the current one ends within ``seconds``."""
    left = period_s - time.time() % period_s
    if left < seconds:
        await asyncio.sleep(left + 0.05)


# --- keys -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(
    tiny_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``vision-api serve`` with a key in clear, a key by digest, and one CORS origin."""
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys.sha256"
    keys_file.write_text(f"# ops team\n{hashlib.sha256(FILE_KEY.encode()).hexdigest()}\n")
    port = free_port()
    env = {
        "VISION_API_REDIS_URL": "",
        "VISION_API_API_KEYS": f"{KEY},{OTHER_KEY}",
        "VISION_API_API_KEYS_FILE": str(keys_file),
        "VISION_API_CORS_ORIGINS": "https://app.example",
        "VISION_API_LOG_LEVEL": "debug",
    }
    proc = start_server(["serve", "--config", str(tiny_config), "--port", str(port)], env, port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def keyed(keyed_server: tuple[str, subprocess.Popen[bytes]]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_server[0], timeout=60) as client:
        yield client


def test_health_and_docs_need_no_key(keyed: httpx.Client) -> None:
    for path in OPEN:
        response = keyed.get(path)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_everything_else_needs_a_key(keyed: httpx.Client, method: str, path: str) -> None:
    assert_unauthorized(keyed.request(method, path, json={}))
    for headers in (
        {"Authorization": "Bearer wrong-key"},
        {"X-API-Key": "wrong-key"},
        {"Authorization": KEY},  # no scheme
        {"Authorization": "Basic " + KEY},
        {"X-API-Key": KEY + " x"},
    ):
        assert_unauthorized(keyed.request(method, path, json={}, headers=headers))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {OTHER_KEY}"},
        {"X-API-Key": KEY},
        {"X-API-Key": FILE_KEY},
        {"Authorization": f"Bearer {FILE_KEY}"},
    ],
    ids=["bearer", "bearer-lowercase", "x-api-key", "digest-file-x-api-key", "digest-file-bearer"],
)
def test_either_header_with_an_accepted_key_passes(
    keyed: httpx.Client, headers: dict[str, str]
) -> None:
    assert keyed.get("/models/status", headers=headers).status_code == 200
    response = keyed.post(
        "/inference/dinov3", json={"images": [asset_b64("chelsea.jpg")]}, headers=headers
    )
    assert response.status_code == 200, response.text


def test_schema_marks_exactly_the_operations_that_need_a_key(keyed: httpx.Client) -> None:
    schema = keyed.get("/schema/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key>",
    }
    assert schemes["apiKeyAuth"]["in"] == "header" and schemes["apiKeyAuth"]["name"] == "X-API-Key"
    checked = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete"):
                continue
            url = path.replace("{model_type}", "dinov3").replace("{job_id}", "x")
            response = keyed.request(method.upper(), url, json={})
            declared = operation.get("security")
            if response.status_code == 401:
                assert declared == [{"bearerAuth": []}, {"apiKeyAuth": []}], (method, path)
            else:
                assert declared is None, (method, path, response.status_code)
            checked += 1
    assert checked >= 15


def test_cors_allows_the_listed_origin_only(keyed: httpx.Client) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    allowed = keyed.options(
        "/inference/dinov3", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in allowed.headers["access-control-allow-headers"]
    other = keyed.options(
        "/inference/dinov3", headers={"Origin": "https://evil.example", **preflight}
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    simple = keyed.get(
        "/models/status", headers={"Origin": "https://app.example", "X-API-Key": KEY}
    )
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


def test_keys_never_reach_the_log(
    keyed_server: tuple[str, subprocess.Popen[bytes]], keyed: httpx.Client
) -> None:
    keyed.get("/models/status", headers={"Authorization": "Bearer sk-wrong-guess-0042"})
    keyed.get("/models/status", headers={"X-API-Key": KEY})
    keyed.post("/inference/dinov3", json={"images": ["x"]}, headers={"X-API-Key": OTHER_KEY})
    _, proc = keyed_server
    proc.terminate()
    proc.wait(timeout=15)
    log = server_log(proc)
    assert "GET /models/status" in log  # the access log was captured
    for secret in (KEY, OTHER_KEY, FILE_KEY, "sk-wrong-guess-0042"):
        assert secret not in log


async def test_without_keys_nothing_needs_one_and_cors_is_off(tiny_config: Path) -> None:
    async with serve_app(settings_for(tiny_config, redis_url="")) as client:
        assert (await client.get("/models/status")).status_code == 200
        response = await client.get("/models/status", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
        schema = (await client.get("/schema/openapi.json")).json()
        assert "securitySchemes" not in schema.get("components", {})


# --- rate limits ------------------------------------------------------------------------------
async def test_rate_limit_per_key_with_retry_after(tiny_config: Path) -> None:
    settings = settings_for(
        tiny_config, redis_url="", api_keys=f"{KEY},{OTHER_KEY}", rate_limit="3/hour"
    )
    async with serve_app(settings) as client:
        await until_window_has(30, 3600)
        first = {"X-API-Key": KEY}
        statuses = [
            (await client.get("/models/status", headers=first)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        refused = await client.get("/models/status", headers=first)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert "rate limit" in refused.json()["detail"].lower()
        assert "api key" in refused.json()["detail"].lower()
        # Another key has its own budget; health is never limited; a wrong key is still a 401.
        assert (
            await client.get("/models/status", headers={"X-API-Key": OTHER_KEY})
        ).status_code == 200
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/health/live")).status_code == 200
        assert_unauthorized(await client.get("/models/status", headers={"X-API-Key": "nope"}))


async def test_rate_limit_per_client_address_without_keys(tiny_config: Path) -> None:
    async with serve_app(settings_for(tiny_config, redis_url="", rate_limit="2/hour")) as client:
        await until_window_has(30, 3600)
        assert (await client.get("/models/status")).status_code == 200
        assert (await client.post("/models/unload-all")).status_code == 200
        refused = await client.get("/")
        assert refused.status_code == 429 and "client address" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1


async def test_two_replicas_share_one_limit_through_redis(
    tiny_config: Path,
    redis_client: redis.Redis,  # noqa: F811
    redis_prefix: str,  # noqa: F811
) -> None:
    env: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "redis_key_prefix": redis_prefix,
        "api_keys": KEY,
        "rate_limit": "4/hour",
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        serve_app(settings_for(tiny_config, **env)) as first,
        serve_app(settings_for(tiny_config, **env)) as second,
    ):
        await until_window_has(30, 3600)
        statuses = [
            (await replica.get("/models/status", headers=headers)).status_code
            for replica in (first, second, first, second)
        ]
        assert statuses == [200, 200, 200, 200]
        for replica in (first, second):
            refused = await replica.get("/models/status", headers=headers)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
    (key,) = redis_client.keys(f"{redis_prefix}:ratelimit:*")
    assert KEY.encode() not in key  # the counter names the key by a digest prefix only
    assert int(redis_client.get(key) or 0) == 6
    assert 0 < redis_client.ttl(key) <= 3601
