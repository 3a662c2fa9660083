"""Operability over real HTTP: probes, metrics, overload, graceful shutdown, JSON logs.

The gate family (tests/fakes.py) holds forwards and loads open to make in-flight work
observable; everything else runs the tiny real models, under uvicorn in this event loop or as a
real ``vision-api serve`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import (  # noqa: E402
    BODY,
    REDIS_URL,
    Process,
    free_port,
    serve_app,
    settings_for,
    wait_for,
)

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.conftest import asset_b64  # noqa: E402
from tests.fakes import GATE_ENDPOINT, GateFamily, gate_registry  # noqa: E402

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix
GATE_BODY = {"images": [asset_b64("chelsea.jpg")]}


@asynccontextmanager
async def gate_app(family: GateFamily, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app serving the gate family under uvicorn in this loop; a client for it."""
    environ = {f"VISION_API_{k.upper()}": v for k, v in env.items()}
    app = create_app(
        Settings.load(environ=environ), registry=gate_registry(family), endpoints=[GATE_ENDPOINT]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        family.gate.set()
        server.should_exit = True
        await task


async def until_ready(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (response := await client.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


# -- probes -------------------------------------------------------------------------------
async def test_live_answers_while_preloading_and_ready_waits_for_the_warm_model() -> None:
    family = GateFamily(load_s=0.0)
    family.gate.clear()  # the preload blocks until the gate opens
    async with gate_app(family, preload="gate") as client:
        live = await asyncio.wait_for(client.get("/health/live"), timeout=2)
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["detail"] == "Not ready: preloading gate/one."
        assert int(ready.headers["retry-after"]) > 0
        assert (await client.get("/health")).status_code == 200  # /health as it was
        family.gate.set()
        await until_ready(client)
        assert (await client.get("/health/ready")).json() == {"status": "ready"}
        assert family.loads == 1


async def test_a_failed_preload_leaves_ready_at_503_with_the_reason(
    jobs_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(jobs_config, redis_url="", preload="dinov3:broken")
    async with serve_app(settings) as client:
        deadline = time.monotonic() + 30
        while "failed" not in (ready := await client.get("/health/ready")).json()["detail"]:
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.05)
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert detail.startswith("Preloading dinov3/broken failed"), detail
        assert "Traceback" not in ready.text
        assert (await client.get("/health/live")).status_code == 200
        sync = await client.post("/inference/dinov3", json=BODY)  # other models still serve
        assert sync.status_code == 200
    assert any(
        r.message.startswith("preloading dinov3/broken failed") and r.exc_info
        for r in caplog.records
    ), "the log has the traceback"


async def test_ready_needs_a_configured_job_store(jobs_config: Path, redis_prefix: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with serve_app(settings_for(jobs_config, redis_url=closed)) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "job store does not answer" in ready.json()["detail"]
        assert (await client.get("/health/live")).status_code == 200
    queue = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix}
    async with serve_app(settings_for(jobs_config, **queue)) as client:
        await until_ready(client, timeout_s=10)


# -- metrics ------------------------------------------------------------------------------
async def test_metrics_count_requests_images_batches_loads_cache_and_jobs(
    jobs_config: Path,
) -> None:
    settings = settings_for(jobs_config, redis_url="")
    async with serve_app(settings) as client:
        assert (await client.post("/inference/dinov3", json=BODY)).status_code == 200
        two = {**BODY, "images": BODY["images"] * 2}
        assert (await client.post("/inference/dinov3", json=two)).status_code == 200
        secret_id = "job-id-that-must-not-be-a-label"
        assert (await client.get(f"/jobs/{secret_id}")).status_code == 404
        job_id = (await client.post("/jobs/submit/dinov3", json=BODY)).json()["job_id"]
        assert (await wait_for(client, job_id))["status"] == "completed"
        embedded = await client.post("/inference/sam3/embed", json=GATE_BODY)
        (image_id,) = embedded.json()["image_ids"]
        sam3 = {"images": [{"image_id": image_id}], "prompts": ["cat"], "output_format": "rle"}
        assert (await client.post("/inference/sam3", json=sam3)).status_code == 200

        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
        got = samples(text)

    assert secret_id not in text and job_id not in text and image_id not in text
    requests = "vision_api_http_requests_total"
    assert value(got, requests, method="POST", route="/inference/dinov3", status="200") == 2
    assert value(got, requests, method="GET", route="/jobs/{job_id}", status="404") == 1
    assert value(got, requests, method="GET", route="/jobs/{job_id}", status="200") >= 1
    latency = "vision_api_http_request_duration_seconds_count"
    assert value(got, latency, method="POST", route="/inference/dinov3") == 2
    dinov3 = {"model": "dinov3", "variant": "tiny"}
    # 1 + 2 images by request, 1 by the job: 4 through forwards, in 3 forwards
    assert value(got, "vision_api_images_processed_total", **dinov3) == 4
    assert value(got, "vision_api_batch_size_sum", **dinov3) == 4
    assert value(got, "vision_api_batch_size_count", **dinov3) == 3
    assert value(got, "vision_api_batch_size_bucket", le="1.0", **dinov3) == 2
    loads = {**dinov3, "engine": "torch"}
    assert value(got, "vision_api_model_loads_total", **loads) == 1
    assert value(got, "vision_api_model_load_seconds_count", **loads) == 1
    assert value(got, "vision_api_model_load_seconds_sum", **loads) > 0
    resident = {**loads, "device": "cpu"}
    assert value(got, "vision_api_model_loaded", **resident) == 1
    assert value(got, "vision_api_model_memory_mb", **resident) > 0
    assert ("vision_api_model_requests_in_flight", frozenset(dinov3.items())) in got
    sam3_labels = {"model": "sam3", "variant": "tiny"}
    assert value(got, "vision_api_cache_hits_total", **sam3_labels) == 1
    assert value(got, "vision_api_cache_misses_total", **sam3_labels) >= 1
    assert value(got, "vision_api_jobs", status="completed") == 1
    assert value(got, "vision_api_jobs", status="pending") == 0
    assert value(got, "vision_api_job_store_up") == 1
    assert ("vision_api_http_requests_in_flight", frozenset()) in got


# -- overload -----------------------------------------------------------------------------
async def test_beyond_the_in_flight_limit_a_model_answers_503_at_once() -> None:
    family = GateFamily(load_s=0.0)
    async with gate_app(family, max_in_flight_per_model="2") as client:
        assert (await client.post("/models/load", json={"model_type": "gate"})).status_code == 200
        family.gate.clear()  # forwards wait: requests stay in flight
        held = [asyncio.create_task(client.post("/inference/gate", json=GATE_BODY)) for _ in "ab"]
        await asyncio.sleep(0.5)
        refused = await asyncio.gather(
            *(client.post("/inference/gate", json=GATE_BODY) for _ in range(4))
        )
        assert [r.status_code for r in refused] == [503] * 4
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert "max_in_flight_per_model" in refused[0].json()["detail"]
        assert not any(t.done() for t in held)
        family.gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        after = await client.post("/inference/gate", json=GATE_BODY)
        assert after.status_code == 200, "room again once the requests finished"
        got = samples((await client.get("/metrics")).text)
    total = "vision_api_http_requests_total"
    assert value(got, total, method="POST", route="/inference/gate", status="503") == 4
    assert value(got, total, method="POST", route="/inference/gate", status="200") == 3


# -- shutdown -----------------------------------------------------------------------------
async def test_shutdown_waits_for_the_request_in_flight() -> None:
    family = GateFamily(load_s=0.0)
    app = create_app(
        Settings.load(environ={"VISION_API_SHUTDOWN_GRACE_S": "30"}),
        registry=gate_registry(family),
        endpoints=[GATE_ENDPOINT],
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        assert (await client.post("/models/load", json={"model_type": "gate"})).status_code == 200
        family.gate.clear()
        request = asyncio.create_task(client.post("/inference/gate", json=GATE_BODY))
        await asyncio.sleep(0.3)
        server.should_exit = True  # what SIGTERM does
        await asyncio.sleep(0.5)
        assert not task.done() and not request.done()
        family.gate.set()
        response = await request
    await task
    assert response.status_code == 200
    assert family.cores[0].closed, "models unloaded after the request finished"


def _trickle(sigterm: Any, body: bytes) -> Iterator[bytes]:
    """The body in 4 pieces, SIGTERM sent after the first: a slow client mid-request."""
    step = len(body) // 4 + 1
    for start in range(0, len(body), step):
        yield body[start : start + step]
        time.sleep(0.4)
        if start == 0:
            sigterm()


def test_sigterm_lets_the_request_in_flight_finish_and_logs_json(
    jobs_config: Path, tmp_path: Path
) -> None:
    port = free_port()
    process = Process(
        ["serve", "--config", str(jobs_config), "--port", str(port)],
        {
            "VISION_API_REDIS_URL": "",
            "VISION_API_LOG_FORMAT": "json",
            "VISION_API_SHUTDOWN_GRACE_S": "20",
            "VISION_API_PRELOAD": "dinov3",
        },
        tmp_path / "serve.log",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.proc.poll() is None, process.text()[-3000:]
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, process.text()[-3000:]
        time.sleep(0.2)
    body = json.dumps(BODY).encode()
    response = httpx.post(
        f"{url}/inference/dinov3",
        content=_trickle(lambda: process.proc.send_signal(signal.SIGTERM), body),
        headers={"content-type": "application/json", "x-request-id": "drain-test-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    assert process.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):  # stopped: accepts nothing any more
        httpx.get(f"{url}/health/live", timeout=2)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0

    records = [json.loads(line) for line in process.text().splitlines() if line.startswith("{")]
    assert {"time", "level", "logger", "message", "request_id"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert any("Application startup complete" in m for m in messages)  # uvicorn's, as JSON
    assert any("preloaded dinov3" in m for m in messages)
    assert any("Application shutdown complete" in m for m in messages)
    answered = next(
        i
        for i, r in enumerate(records)
        if r["logger"] == "uvicorn.access" and "/inference/dinov3" in r["message"]
    )
    stopping = next(i for i, m in enumerate(messages) if "Shutting down" in m)
    assert stopping < answered, "SIGTERM arrived while the request was in flight"
    assert BODY["images"][0][:64] not in process.text(), "no image bytes in the log"
    process.stop()


# -- the in-process job worker at shutdown -------------------------------------------------
async def test_the_in_process_worker_finishes_its_job_within_the_grace_or_fails_it(
    jobs_config: Path,
) -> None:
    from service.jobs.memory import MemoryJobBackend
    from service.wiring import build_inference, build_pool

    settings = settings_for(jobs_config, redis_url="", debug_job_delay_s=1.0)
    inference = build_inference(settings, build_pool(settings))
    body = json.dumps(BODY).encode()
    try:
        for grace_s, expected in [(30.0, "completed"), (0.1, "failed")]:
            jobs = MemoryJobBackend(inference, settings.jobs)
            await jobs.start()
            resolved, data, images = await _validated(inference, body)
            running = await jobs.submit(resolved, data, images)
            waiting = await jobs.submit(resolved, data, images)
            while (await jobs.get(running.job_id)).status != "running":
                await asyncio.sleep(0.02)
            await jobs.close(grace_s)
            job = await jobs.get(running.job_id)
            assert job.status == expected, job.error
            if expected == "failed":
                assert "shut down while the job was running" in (job.error or "")
                assert "shutdown_grace_s (0.1 s)" in (job.error or "")
            queued = await jobs.get(waiting.job_id)
            assert queued.status == "failed" and "before the job ran" in (queued.error or "")
            counts = await jobs.counts()
            assert counts["running"] == counts["pending"] == 0
            assert sum(counts.values()) == 2
    finally:
        await inference.pool.close()


async def _validated(inference: Any, body: bytes) -> tuple[str, Any, list]:
    from service.routes.intake import validate_submission

    endpoint, _, data, images = await validate_submission(inference, "dinov3", body)
    return endpoint.name, data, images


def test_two_worker_processes_report_their_metrics_together(
    jobs_config: Path, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    shared = tmp_path / "prometheus"
    shared.mkdir()
    process = Process(
        ["serve", "--config", str(jobs_config), "--port", str(port), "--workers", "2"],
        {
            "PROMETHEUS_MULTIPROC_DIR": str(shared),
            "VISION_API_REDIS_URL": REDIS_URL,
            "VISION_API_REDIS_KEY_PREFIX": redis_prefix,
        },
        tmp_path / "serve.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.proc.poll() is None, process.text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, process.text()[-3000:]
            time.sleep(0.2)
        # new connections: uvicorn's workers share the socket, so both answer some
        codes = [
            httpx.post(f"{url}/inference/dinov3", json=BODY, timeout=60).status_code
            for _ in range(8)
        ]
        assert codes == [200] * 8
        got = samples(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        process.stop()
    total = "vision_api_http_requests_total"
    assert value(got, total, method="POST", route="/inference/dinov3", status="200") == 8
    assert value(got, "vision_api_images_processed_total", model="dinov3", variant="tiny") == 8
    loads = value(
        got, "vision_api_model_loads_total", model="dinov3", variant="tiny", engine="torch"
    )
    assert loads in (1, 2)  # one per worker that answered a request
