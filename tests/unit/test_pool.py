"""Pool mechanics: load once, lazy loading, unload after in-flight work, batching, errors."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from engines.errors import ModelNotLoadedError, NotFoundError
from engines.pool import ModelPool, PoolConfig
from engines.registry import FamilyRegistry
from tests.fakes import GateFamily, gate_registry

IMAGES = [Image.new("L", (4, 4), 1), Image.new("L", (4, 4), 2), Image.new("L", (6, 4), 3)]


def make_pool(family: GateFamily, **config: object) -> ModelPool:
    return ModelPool(gate_registry(family), PoolConfig(**config))  # type: ignore[arg-type]


async def test_concurrent_requests_load_once() -> None:
    family = GateFamily()
    pool = make_pool(family)
    outcomes = await asyncio.gather(*(pool.infer("gate", None, IMAGES[:1], None) for _ in range(5)))
    assert family.loads == 1
    assert all(o.model is outcomes[0].model for o in outcomes)
    await pool.close()


async def test_results_in_input_order_with_shape_batches() -> None:
    pool = make_pool(GateFamily(), max_batch_size=8)
    outcome = await pool.infer("gate", None, IMAGES, None)
    assert [r["sum"] for r in outcome.results] == [16.0, 32.0, 72.0]
    assert [r["batch"] for r in outcome.results] == [2, 2, 1]
    pool_one = make_pool(GateFamily(), max_batch_size=1)
    assert [r["batch"] for r in (await pool_one.infer("gate", None, IMAGES, None)).results] == [
        1
    ] * 3
    await pool.close()
    await pool_one.close()


async def test_lazy_loading_off_is_an_error() -> None:
    pool = make_pool(GateFamily(), lazy_loading=False)
    with pytest.raises(ModelNotLoadedError, match="POST /models/load first"):
        await pool.infer("gate", None, IMAGES[:1], None)
    await pool.load("gate")
    assert (await pool.infer("gate", None, IMAGES[:1], None)).results[0]["sum"] == 16.0
    await pool.close()


async def test_unload_waits_for_in_flight_requests() -> None:
    family = GateFamily()
    pool = make_pool(family)
    await pool.load("gate")
    family.gate.clear()
    request = asyncio.create_task(pool.infer("gate", None, IMAGES[:1], None))
    await asyncio.sleep(0.2)
    unload = asyncio.create_task(pool.unload("gate"))
    await asyncio.sleep(0.2)
    assert not unload.done() and not family.cores[0].closed
    family.gate.set()
    assert (await request).results[0]["sum"] == 16.0
    assert await unload == [("gate", "one")]
    assert family.cores[0].closed and pool.loaded() == []
    await pool.close()


async def test_aliases_variants_and_status() -> None:
    pool = make_pool(GateFamily())
    await pool.load("gate_alias", "two")
    status = {e["variant"]: e for e in pool.status()}
    assert status["two"]["loaded"] and status["two"]["memory_mb"] == 0.0
    assert status["one"]["loaded"] is False and status["one"]["default"] is True
    with pytest.raises(NotFoundError, match="Unknown variant 'three'"):
        await pool.load("gate", "three")
    with pytest.raises(NotFoundError, match="Unknown model type"):
        await pool.load("nope")
    assert await pool.unload("gate") == [("gate", "two")]
    await pool.close()


async def test_failing_forward_is_an_inference_error_naming_the_model() -> None:
    from engines.errors import InferenceError

    family = GateFamily()
    pool = make_pool(family)
    await pool.load("gate")
    family.cores[0].closed = True  # the core now refuses to run
    with pytest.raises(InferenceError, match="gate/one failed: RuntimeError"):
        await pool.infer("gate", None, IMAGES[:1], None)
    await pool.close()


def test_registry_refuses_silent_override() -> None:
    registry = FamilyRegistry()
    registry.register(GateFamily())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(GateFamily())
