"""HTTP mechanics driven by a fake family: model work never blocks the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.conftest import free_port
from tests.fakes import GATE_ENDPOINT, GateFamily, gate_registry


@pytest.fixture
async def gate_server() -> AsyncIterator[tuple[str, GateFamily]]:
    """The real app under uvicorn, in this event loop, serving the gate family."""
    family = GateFamily()
    app = create_app(
        Settings.load(environ={}), registry=gate_registry(family), endpoints=[GATE_ENDPOINT]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}", family
    family.gate.set()
    server.should_exit = True
    await task


async def test_health_answers_while_a_model_works(gate_server: tuple[str, GateFamily]) -> None:
    url, family = gate_server
    family.gate.clear()  # loading blocks until the gate opens
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        load = asyncio.create_task(client.post("/models/load", json={"model_type": "gate"}))
        await asyncio.sleep(0.5)
        health = await asyncio.wait_for(client.get("/health"), timeout=2)
        assert health.status_code == 200
        assert health.json()["models_loaded"] == []
        assert not load.done()
        family.gate.set()
        assert (await load).status_code == 200
        health = (await client.get("/health")).json()
        assert health["models_loaded"][0]["model_type"] == "gate"
