"""Helpers and fixtures for the job tests: Redis with a per-test key prefix, the app under
uvicorn in the test's event loop, ``vision-api serve`` / ``vision-api worker`` subprocesses.

Imported by ``test_jobs_*.py`` (fixtures defined here are registered by that import).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from service.app import create_app
from service.settings import Settings

ASSETS = Path(__file__).parents[1] / "assets"
REDIS_URL = os.environ.get("VISION_API_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHELSEA_B64 = base64.b64encode((ASSETS / "chelsea.jpg").read_bytes()).decode()
BODY: dict[str, Any] = {"images": [CHELSEA_B64], "pooling": "cls"}
BROKEN_BODY: dict[str, Any] = {**BODY, "variant": "broken"}
FINAL = ("completed", "failed")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def jobs_config(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models' config plus a dinov3 variant whose checkpoint does not exist."""
    path = tmp_path_factory.mktemp("jobs") / "config.toml"
    path.write_text(
        tiny_config.read_text()
        + '\n[models.dinov3.variants.broken]\nsource = "/nonexistent/dinov3-checkpoint"\n'
    )
    return path


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test Redis (fails, rather than skips, when it is down: CI has one)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"The job tests need Redis at {REDIS_URL} ({exc}); start redis-server.")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys and its jobs' arq keys are removed after."""
    prefix = new_prefix()
    yield prefix
    remove_prefix(redis_client, prefix)


def new_prefix() -> str:
    """A fresh ``redis_key_prefix``."""
    return f"vision-api-test-{uuid.uuid4().hex[:10]}"


def remove_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete the keys under ``prefix`` and the arq keys of the jobs it indexes."""
    ids = {i.decode() for i in client.zrange(f"{prefix}:jobs", 0, -1)}
    ids |= {i.decode() for i in client.zrange(f"{prefix}:queue", 0, -1)}
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for job_id in ids:
        keys += [f"arq:{kind}:{job_id}" for kind in ("job", "result", "retry", "in-progress")]
    if keys:
        client.delete(*keys)
    if ids:
        client.zrem("arq:abort", *ids)


def settings_for(config: Path, **env: Any) -> Settings:
    """Settings from ``config`` and ``VISION_API_*`` values given as keyword arguments."""
    environ = {f"VISION_API_{k.upper()}": str(v) for k, v in env.items()}
    return Settings.load(config, environ=environ)


@contextlib.asynccontextmanager
async def serve_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free port, in this event loop; a client for it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def wait_for(
    client: httpx.AsyncClient,
    job_id: str,
    statuses: tuple[str, ...] = FINAL,
    timeout_s: float = 60,
    seen: list[str] | None = None,
    poll_s: float = 0.05,
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until its status is one of ``statuses``; each status seen is
    appended to ``seen`` (once per change)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if seen is not None and (not seen or seen[-1] != job["status"]):
            seen.append(job["status"])
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s: {job}")
        await asyncio.sleep(poll_s)


class Process:
    """A ``vision-api`` subprocess writing its output to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "VISION_API_TORCH_THREADS": "1", **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(errors="replace")

    def wait_for_line(self, needle: str, timeout_s: float = 90) -> None:
        """Wait until its output contains ``needle``."""
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.log.name}: no {needle!r}:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send ``sig`` and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._out.close()


def start_worker(config: Path, env: dict[str, str], log: Path) -> Process:
    """``vision-api worker --config`` (wait with ``wait_for_line(WORKER_READY)``)."""
    return Process(["worker", "--config", str(config)], env, log)


def start_api(config: Path, env: dict[str, str], log: Path) -> tuple[Process, str]:
    """``vision-api serve --config`` on a free port; the process and its base URL."""
    port = free_port()
    return Process(
        ["serve", "--config", str(config), "--port", str(port)], env, log
    ), f"http://127.0.0.1:{port}"


def wait_healthy(url: str, process: Process, timeout_s: float = 90) -> None:
    """Wait until ``GET /health`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.log.name} exited:\n{process.text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not healthy:\n{process.text()[-3000:]}")
        time.sleep(0.2)


WORKER_READY = "job worker ready"
