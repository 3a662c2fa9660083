"""The pool's observer and in-flight limit (driven by the gate family), and the JSON log
format."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from PIL import Image

from engines.errors import UnavailableError
from engines.pool import ModelPool, PoolConfig, PoolObserver
from service.request_ids import JsonFormatter, RequestIdFilter, configure_logging, request_id
from tests.fakes import GateFamily, gate_registry


def image(value: int) -> Image.Image:
    return Image.new("L", (4, 4), value)


async def test_the_observer_sees_each_batch_and_each_load() -> None:
    family = GateFamily(load_s=0.0)
    pool = ModelPool(gate_registry(family), PoolConfig(max_batch_size=8))
    batches: list[tuple[str, str, int]] = []
    loads: list[tuple[str, str, str]] = []
    pool.observer = PoolObserver(
        on_batch=lambda *event: batches.append(event),
        on_load=lambda m, v, engine, seconds: loads.append((m, v, engine)) if seconds > 0 else None,
    )
    await pool.load("gate")
    family.gate.clear()
    first = asyncio.create_task(pool.infer("gate", None, [image(0)], None))
    await asyncio.sleep(0.2)
    queued = [asyncio.create_task(pool.infer("gate", None, [image(v)], None)) for v in (1, 2)]
    await asyncio.sleep(0.1)
    family.gate.set()
    await asyncio.gather(first, *queued)
    assert loads == [("gate", "one", "torch")]
    assert batches == [("gate", "one", 1), ("gate", "one", 2)]
    await pool.close()


async def test_a_failing_observer_does_not_fail_the_batch() -> None:
    family = GateFamily(load_s=0.0)
    pool = ModelPool(gate_registry(family), PoolConfig())

    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    pool.observer = PoolObserver(on_batch=broken)
    outcome = await pool.infer("gate", None, [image(1)], None)
    assert outcome.results[0]["sum"] == 16.0
    await pool.close()


async def test_requests_beyond_the_in_flight_limit_are_refused_at_once() -> None:
    family = GateFamily(load_s=0.0)
    pool = ModelPool(gate_registry(family), PoolConfig(max_in_flight_per_model=3))
    await pool.load("gate")
    family.gate.clear()
    calls = [pool.infer("gate", None, [image(v)], None) for v in range(10)]
    tasks = [asyncio.create_task(c) for c in calls]
    await asyncio.sleep(0.2)
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 7
    for task in refused:
        with pytest.raises(UnavailableError, match="max_in_flight_per_model") as caught:
            task.result()
        assert caught.value.retry_after_s == 1
    family.gate.set()
    done = await asyncio.gather(*(t for t in tasks if t not in refused))
    assert len(done) == 3
    assert pool.loaded()[0].in_flight == 0
    await pool.close()


def test_json_lines_carry_the_request_id_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("rid-42")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %s", "dinov3")
    finally:
        request_id.reset(token)
    logger.warning("outside")
    logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "failed on dinov3" and first["level"] == "ERROR"
    assert first["logger"] == "test.json" and first["request_id"] == "rid-42"
    assert "ValueError: boom" in first["exception"] and first["time"].endswith("+00:00")
    assert second["request_id"] is None and "exception" not in second


def test_configure_logging_routes_uvicorn_through_the_json_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    try:
        logging.getLogger("uvicorn.error").warning("uvicorn says something")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["logger"] == "uvicorn.error"
    finally:
        configure_logging()
