"""The memory budget: least recently used models make room, within the rules that stop thrash."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import psutil
import pytest
from PIL import Image

from benchmarks.checkpoints import dinov3_vits16
from engines.base import VariantSpec
from engines.budget import Resident, plan_room
from engines.errors import UnavailableError
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from tests.fakes import GateFamily, gate_registry

IMAGE = Image.new("L", (4, 4), 1)


def resident(key: str, mb: float, idle_s: float, **state: object) -> Resident:
    defaults = {"busy": False, "pinned": False, "resident_s": 600.0}
    return Resident(key=key, label=key, memory_mb=mb, idle_s=idle_s, **{**defaults, **state})


def test_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    residents = [resident("a", 40, idle_s=5), resident("b", 40, idle_s=50), resident("c", 40, 20)]
    assert plan_room("new", 30, 130, residents, 0) == ["b"]
    assert plan_room("new", 70, 130, residents, 0) == ["b", "c"]
    assert plan_room("new", 10, 130, residents, 0) == []


def test_busy_pinned_and_recent_models_stay() -> None:
    residents = [
        resident("busy", 40, idle_s=90, busy=True),
        resident("pinned", 40, idle_s=80, pinned=True),
        resident("recent", 40, idle_s=70, resident_s=3),
        resident("old", 40, idle_s=1),
    ]
    assert plan_room("new", 40, 160, residents, min_residency_s=10) == ["old"]
    with pytest.raises(UnavailableError, match="busy.*preloaded.*just loaded") as caught:
        plan_room("new", 80, 160, residents, min_residency_s=10)
    assert caught.value.retry_after_s == 7  # when "recent" may go


def test_a_model_larger_than_the_budget_is_refused_naming_it() -> None:
    with pytest.raises(UnavailableError, match=r"big needs about 300 MB.*budget of 200 MB"):
        plan_room("big", 300, 200, [], 0)


def gate_pool(family: GateFamily, **config: object) -> ModelPool:
    return ModelPool(gate_registry(family), PoolConfig(**config))  # type: ignore[arg-type]


async def test_loading_over_the_budget_unloads_the_least_recently_used() -> None:
    family = GateFamily(load_s=0, memory_mb=100)
    pool = gate_pool(family, memory_budget_mb=150, min_residency_s=0)
    await pool.load("gate", "one")
    await pool.load("gate", "two")
    assert [m.variant for m in pool.loaded()] == ["two"]
    assert family.cores[0].closed  # its weights were released
    await pool.infer("gate", "one", [IMAGE], None)  # lazily loaded back, "two" makes room
    assert [m.variant for m in pool.loaded()] == ["one"]
    await pool.close()


async def test_minimum_residency_answers_503_with_retry_after() -> None:
    family = GateFamily(load_s=0, memory_mb=100)
    pool = gate_pool(family, memory_budget_mb=150, min_residency_s=30)
    await pool.load("gate", "one")
    with pytest.raises(UnavailableError, match="memory budget") as caught:
        await pool.load("gate", "two")
    assert 1 <= (caught.value.retry_after_s or 0) <= 30
    assert [m.variant for m in pool.loaded()] == ["one"]
    assert family.cores[-1].closed  # the model that did not fit was released again
    await pool.close()


def sized_variants(root: Path, mb: int) -> dict[str, VariantTable]:
    """The gate's two variants as directories whose weight files say ``mb`` (sparse files)."""
    specs = {}
    for name in ("one", "two"):
        (root / name).mkdir()
        with open(root / name / "model.safetensors", "wb") as weights:
            weights.truncate(mb * 2**20)
        specs[name] = VariantSpec(name, str(root / name))
    return {"gate": VariantTable("one", specs)}


async def test_preloaded_and_busy_models_are_never_unloaded_for_room(tmp_path: Path) -> None:
    family = GateFamily(load_s=0, memory_mb=100)
    variants = sized_variants(tmp_path, 100)
    pool = gate_pool(family, memory_budget_mb=150, min_residency_s=0, variants=variants)
    await pool.load("gate", "one", pinned=True)
    with pytest.raises(UnavailableError, match="preloaded"):
        await pool.load("gate", "two")
    await pool.unload_all()
    await pool.load("gate", "one")
    family.gate.clear()
    busy = asyncio.create_task(pool.infer("gate", "one", [IMAGE], None))
    await asyncio.sleep(0.2)
    with pytest.raises(UnavailableError, match="busy"):
        await pool.load("gate", "two")  # refused from the files' size, before loading
    family.gate.set()
    await busy
    assert family.loads == 2  # "two" never loaded
    await pool.close()


async def test_a_model_larger_than_the_budget_is_a_503() -> None:
    pool = gate_pool(GateFamily(load_s=0, memory_mb=100), memory_budget_mb=50)
    with pytest.raises(UnavailableError, match="more than the memory budget of 50 MB"):
        await pool.load("gate")
    assert pool.loaded() == []
    await pool.close()


async def test_unloading_gives_the_memory_back(tmp_path: Path) -> None:
    dinov3_vits16(tmp_path / "vits")  # the benchmarks' ViT-S/16 writer: ~86 MB of weights
    table = VariantTable("s", {"s": VariantSpec("s", str(tmp_path / "vits"))})
    pool = ModelPool(default_registry(), PoolConfig(variants={"dinov3": table}, dtype="float32"))
    process = psutil.Process()
    gc.collect()
    before_mb = process.memory_info().rss / 2**20
    model = await pool.load("dinov3")
    loaded_mb = process.memory_info().rss / 2**20
    assert model.memory_mb > 80 and loaded_mb - before_mb > 60
    await pool.unload("dinov3")
    del model
    gc.collect()
    after_mb = process.memory_info().rss / 2**20
    # most of what loading took is returned (allocator caches may keep a little)
    assert after_mb - before_mb < 0.5 * (loaded_mb - before_mb), (before_mb, loaded_mb, after_mb)
    await pool.close()
