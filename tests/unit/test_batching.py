"""Dynamic batching in the pool, driven by the gate family (a forward that waits on an event)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from PIL import Image

from engines.base import DeferredImage, SizeHint
from engines.batching import gather_list, options_key
from engines.errors import InferenceError, InvalidInputError
from engines.pool import ModelPool, PoolConfig
from tests.fakes import INVALID_WIDTH, POISON_WIDTH, GateFamily, GateOptions, gate_registry


def image(value: int, width: int = 4) -> Image.Image:
    return Image.new("L", (width, 4), value)


@dataclass
class Tagged:
    tag: str


async def loaded_pool(family: GateFamily, **config: object) -> ModelPool:
    pool = ModelPool(gate_registry(family), PoolConfig(**config))  # type: ignore[arg-type]
    await pool.load("gate")
    return pool


async def blocked_first(pool: ModelPool, family: GateFamily) -> asyncio.Task:
    """A request whose forward is running (held at the gate), so the next ones queue."""
    family.gate.clear()
    first = asyncio.create_task(pool.infer("gate", None, [image(0)], None))
    await asyncio.sleep(0.2)
    return first


def batch_sizes(pool: ModelPool) -> dict[str, int]:
    (entry,) = [e for e in pool.status() if e["loaded"]]
    return entry["batch_sizes"]


async def test_requests_queued_during_a_forward_share_the_next_one() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8)
    first = await blocked_first(pool, family)
    queued = [asyncio.create_task(pool.infer("gate", None, [image(v)], None)) for v in (1, 2, 3)]
    await asyncio.sleep(0.1)
    family.gate.set()
    assert (await first).results[0]["batch"] == 1
    outcomes = await asyncio.gather(*queued)
    # each request gets its own image's result, from one shared forward of three
    assert [o.results[0]["sum"] for o in outcomes] == [16.0, 32.0, 48.0]
    assert [o.results[0]["batch"] for o in outcomes] == [3, 3, 3]
    assert batch_sizes(pool) == {"1": 1, "3": 1}  # warm-up does not go through the batcher
    await pool.close()


async def test_batches_stop_at_max_batch_size() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=2)
    first = await blocked_first(pool, family)
    queued = [asyncio.create_task(pool.infer("gate", None, [image(v)], None)) for v in (1, 2, 3)]
    await asyncio.sleep(0.1)
    family.gate.set()
    await first
    assert [o.results[0]["batch"] for o in await asyncio.gather(*queued)] == [2, 2, 1]
    await pool.close()


async def test_only_equal_shapes_and_options_share_a_forward() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8)
    first = await blocked_first(pool, family)
    requests = [
        pool.infer("gate", None, [image(1)], Tagged("a")),
        pool.infer("gate", None, [image(2, width=6)], Tagged("a")),  # another shape
        pool.infer("gate", None, [image(3)], Tagged("b")),  # other options
        pool.infer("gate", None, [image(4)], Tagged("a")),
    ]
    queued = [asyncio.create_task(r) for r in requests]
    await asyncio.sleep(0.1)
    family.gate.set()
    await first
    outcomes = await asyncio.gather(*queued)
    assert [o.results[0]["batch"] for o in outcomes] == [2, 1, 1, 2]
    assert [o.results[0]["sum"] for o in outcomes] == [16.0, 48.0, 48.0, 64.0]
    await pool.close()


async def test_a_poisoned_image_does_not_fail_its_batch_mates() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8)
    first = await blocked_first(pool, family)
    mates = [asyncio.create_task(pool.infer("gate", None, [image(v)], None)) for v in (1, 2)]
    bad = asyncio.create_task(pool.infer("gate", None, [image(9, POISON_WIDTH)], None))
    await asyncio.sleep(0.1)
    family.gate.set()
    await first
    assert [o.results[0]["sum"] for o in await asyncio.gather(*mates)] == [16.0, 32.0]
    with pytest.raises(InferenceError, match="ValueError"):
        await bad
    await pool.close()


async def test_a_delay_window_gathers_requests_that_arrive_apart() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8, max_batch_delay_ms=400)
    a = asyncio.create_task(pool.infer("gate", None, [image(1)], None))
    await asyncio.sleep(0.1)
    b = asyncio.create_task(pool.infer("gate", None, [image(2)], None))
    outcomes = await asyncio.gather(a, b)
    assert [o.results[0]["batch"] for o in outcomes] == [2, 2]
    await pool.close()


async def test_one_request_with_many_images_keeps_its_order() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=3)
    images = [image(v, width=4 + (v % 2) * 2) for v in range(1, 8)]
    outcome = await pool.infer("gate", None, images, None)
    assert [r["width"] for r in outcome.results] == [im.width for im in images]
    assert [r["sum"] for r in outcome.results] == [
        float(v * 4 * (4 + (v % 2) * 2)) for v in range(1, 8)
    ]
    await pool.close()


def test_options_keys_ignore_the_request_only_fields() -> None:
    from tests.fakes import GateRequest

    a = GateRequest(images=["x"], variant="one")
    b = GateRequest(images=["y", "z"], variant=None)
    assert options_key(a) == options_key(b) != options_key(GateOptions())
    assert options_key(Tagged("a")) == options_key(Tagged("a")) != options_key(Tagged("b"))
    assert options_key(object()) != options_key(object())


async def test_limits_come_from_the_model_then_the_runtime_then_the_family() -> None:
    family = GateFamily()
    pool = ModelPool(gate_registry(family), PoolConfig())
    assert pool.batch_limits(family, "cpu").max_batch_size == 8
    assert pool.batch_limits(family, "cuda:0").max_batch_size == 32
    assert pool.batch_limits(family, "cuda:0").max_delay_s == pytest.approx(0.002)
    pool = ModelPool(gate_registry(family), PoolConfig(max_batch_size=4, max_batch_delay_ms=5))
    assert (
        pool.batch_limits(family, "cpu").max_batch_size,
        pool.batch_limits(family, "cpu").max_delay_s,
    ) == (4, 0.005)
    config = PoolConfig(max_batch_size=4, batch_limits={"gate": (2, None)})
    pool = ModelPool(gate_registry(family), config)
    assert pool.batch_limits(family, "cpu").max_batch_size == 2
    await pool.close()


async def test_gather_list_awaits_a_single_awaitable_in_place() -> None:
    async def running_task() -> asyncio.Task | None:
        return asyncio.current_task()

    here = asyncio.current_task()
    assert await gather_list([running_task()]) == [here]  # no task of its own: no loop turn
    two = await gather_list([running_task(), running_task()])
    assert here not in two and len(set(two)) == 2  # several: gathered, in order

    async def fails() -> None:
        raise ValueError("one image")

    with pytest.raises(ValueError, match="one image"):
        await gather_list([fails()])


async def test_a_single_image_on_an_idle_model_runs_alone_on_the_compute_thread() -> None:
    """At concurrency 1 one job does every step; under load the helpers and the batcher do."""
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8, torch_threads=2)
    alone = (await pool.infer("gate", None, [image(1)], None)).results[0]
    assert alone["prepared_on"].startswith("compute")
    assert alone["postprocessed_on"].startswith("compute")
    assert alone["prepare_torch_threads"] == 2  # a torch model's resizes use the whole team
    assert batch_sizes(pool) == {"1": 1}  # counted as a forward of one
    first = await blocked_first(pool, family)  # runs alone, held at the gate
    queued = [asyncio.create_task(pool.infer("gate", None, [image(v)], None)) for v in (2, 3)]
    await asyncio.sleep(0.1)
    family.gate.set()
    held = (await first).results[0]
    assert held["prepared_on"].startswith("compute")
    # requests were waiting: its post-processing went to a helper, not before their forward
    assert held["postprocessed_on"].startswith("cpu")
    outcomes = [o.results[0] for o in await asyncio.gather(*queued)]
    assert [r["batch"] for r in outcomes] == [2, 2]  # they queued behind it and shared a forward
    assert all(r["prepared_on"].startswith("cpu") for r in outcomes)
    two = await pool.infer("gate", None, [image(3), image(4)], None)  # side by side
    assert all(r["prepared_on"].startswith("cpu") for r in two.results)
    assert batch_sizes(pool) == {"1": 2, "2": 2}
    for model in pool.loaded():
        model.engine = "onnx"
    onnx = (await pool.infer("gate", None, [image(3)], None)).results[0]
    assert onnx["prepared_on"].startswith("compute")
    assert onnx["prepare_torch_threads"] == 1  # ONNX Runtime's threads have the cores
    for model in pool.loaded():
        model.engine = "torch"
    restored = (await pool.infer("gate", None, [image(3)], None)).results[0]
    assert restored["prepare_torch_threads"] == 2  # the compute thread's count came back
    await pool.close()


async def test_a_batch_delay_window_keeps_single_images_in_the_queue() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8, max_batch_delay_ms=1)
    result = (await pool.infer("gate", None, [image(1)], None)).results[0]
    assert result["prepared_on"].startswith("cpu")
    assert batch_sizes(pool) == {"1": 1}
    await pool.close()


async def test_a_failing_step_of_an_image_run_alone_names_the_step() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8)
    with pytest.raises(InferenceError, match="gate/one failed: ValueError in forward"):
        await pool.infer("gate", None, [image(9, POISON_WIDTH)], None)
    with pytest.raises(InvalidInputError, match="any width but this one"):  # the 4xx, as is
        await pool.infer("gate", None, [image(9, INVALID_WIDTH)], None)
    assert (await pool.infer("gate", None, [image(1)], None)).results[0]["sum"] == 16.0
    await pool.close()


async def test_deferred_images_are_decoded_by_the_thread_that_prepares_them() -> None:
    family = GateFamily()
    pool = await loaded_pool(family, max_batch_size=8)
    decoded_on: list[str] = []
    hinted: list[tuple[int, int] | None] = []

    def deferred(value: int, width: int = 4) -> DeferredImage:
        def decode(hint: SizeHint | None) -> Image.Image:
            decoded_on.append(threading.current_thread().name)
            assert hint is not None  # the pipeline's decode_size, for the decoder to shrink by
            hinted.append(hint(8, 6))
            return image(value, width)

        return DeferredImage(decode)

    alone = await pool.infer("gate", None, [deferred(1)], None)
    assert alone.results[0]["sum"] == 16.0 and decoded_on == ["compute_0"]
    assert alone.timings_ms["decode"] > 0
    two = await pool.infer("gate", None, [deferred(1), deferred(2)], None)
    assert [r["sum"] for r in two.results] == [16.0, 32.0]
    assert all(name.startswith("cpu") for name in decoded_on[1:]) and len(decoded_on) == 3
    assert two.timings_ms["decode"] > 0
    assert hinted == [(4, 3)] * 3  # GatePipeline.decode_size halves

    def broken(hint: SizeHint | None) -> Image.Image:
        raise InvalidInputError("images[0]: not a decodable image")

    for images in ([DeferredImage(broken)], [deferred(1), DeferredImage(broken)]):
        with pytest.raises(InvalidInputError, match="not a decodable image"):
            await pool.infer("gate", None, images, None)
    await pool.close()
