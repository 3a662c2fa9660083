"""The bf16 check's detection drift and what the loader does when a bf16 run fails."""

from __future__ import annotations

import asyncio
from typing import Any

from engines.base import LoadRequest
from engines.cache import LruCache
from engines.drift import box_iou, detection_drift
from engines.pool import ModelPool, PoolConfig
from tests.fakes import GateCore, GateFamily, GatePipeline, gate_registry


def det(prompt: int, score: float, box: list[float]) -> dict[str, Any]:
    return {"prompt_index": prompt, "score": score, "box": box}


def image(*detections: dict[str, Any]) -> dict[str, Any]:
    return {"width": 200, "height": 100, "detections": list(detections)}


def drift(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> dict[str, float]:
    return detection_drift(reference, candidate, items="detections", sure=0.5)


def test_box_iou() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == 50 / 150
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_identical_runs_do_not_drift() -> None:
    run = [image(det(0, 0.9, [10, 10, 50, 50]), det(1, 0.6, [0, 0, 100, 80]))]
    assert drift(run, run) == {
        "sure_matched_fraction": 1.0,
        "scores_max_abs_diff": 0.0,
        "boxes_max_abs_diff_rel": 0.0,
    }


def test_detections_are_matched_by_box_not_by_rank() -> None:
    # Two near-tied detections of one prompt swap places: each is compared with itself.
    reference = [image(det(0, 0.80, [10, 10, 50, 50]), det(0, 0.79, [100, 10, 150, 60]))]
    candidate = [image(det(0, 0.80, [100, 12, 150, 60]), det(0, 0.78, [10, 10, 50, 50]))]
    metrics = drift(reference, candidate)
    assert metrics["sure_matched_fraction"] == 1.0
    assert abs(metrics["scores_max_abs_diff"] - 0.02) < 1e-9
    assert metrics["boxes_max_abs_diff_rel"] == 2 / 200


def test_a_confident_detection_missing_or_invented_is_a_mismatch() -> None:
    reference = [image(det(0, 0.9, [10, 10, 50, 50]))]
    gone = [image(det(0, 0.3, [120, 10, 190, 90]))]  # elsewhere: not the same object
    assert drift(reference, gone)["sure_matched_fraction"] == 0.0
    invented = [image(det(0, 0.9, [10, 10, 50, 50]), det(1, 0.7, [0, 0, 20, 20]))]
    assert drift(reference, invented)["sure_matched_fraction"] == 2 / 3
    other_prompt = [image(det(1, 0.9, [10, 10, 50, 50]))]
    assert drift(reference, other_prompt)["sure_matched_fraction"] == 0.0


def test_scores_crossing_the_threshold_by_rounding_are_not_mismatches() -> None:
    # Below ``sure`` in both runs: need not be found; found, its drift still counts.
    reference = [image(det(0, 0.45, [10, 10, 50, 50]))]
    assert drift(reference, [image()])["sure_matched_fraction"] == 1.0
    assert drift(reference, [image(det(0, 0.49, [10, 10, 50, 50]))]) == {
        "sure_matched_fraction": 1.0,
        "scores_max_abs_diff": 0.0,
        "boxes_max_abs_diff_rel": 0.0,
    }


def test_pair_metric_is_reported_over_matched_pairs() -> None:
    reference = [image(det(0, 0.9, [10, 10, 50, 50]), det(1, 0.8, [0, 0, 99, 99]))]
    metrics = detection_drift(
        reference,
        reference,
        items="detections",
        sure=0.5,
        pair_metric=lambda a, b, result: 0.5 if a["prompt_index"] else 0.9,
    )
    assert metrics["pair_metric_min"] == 0.5


def test_cache_reset_forgets_entries_and_counters() -> None:
    cache: LruCache[str, int] = LruCache(100)
    cache.put("a", 1, 10)
    assert cache.get("a") == 1 and cache.get("b") is None
    cache.reset()
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses) == (0, 0, 0, 0)


class NoBf16Pipeline(GatePipeline):
    def forward(self, batch: Any, options: Any) -> list[Any]:
        raise RuntimeError("no bf16 kernel for this op")


class NoBf16Family(GateFamily):
    """Passes any gate, but its bf16 weights cannot run."""

    precision_gates = {"always": (">=", 0.0)}

    def precision_metrics(self, reference: Any, candidate: Any) -> dict[str, float]:
        return {"always": 1.0}

    def load_torch(self, request: LoadRequest) -> GatePipeline:
        pipeline = super().load_torch(request)
        if request.dtype == "bfloat16":
            return NoBf16Pipeline(pipeline.core)
        return pipeline


class NoBf16LoadFamily(GateFamily):
    """Passes any gate, but its bf16 weights cannot even be loaded."""

    precision_gates = {"always": (">=", 0.0)}

    def precision_metrics(self, reference: Any, candidate: Any) -> dict[str, float]:
        return {"always": 1.0}

    def load_torch(self, request: LoadRequest) -> GatePipeline:
        if request.dtype == "bfloat16":
            raise RuntimeError("no bf16 weights")
        return super().load_torch(request)


def test_a_bf16_load_that_fails_leaves_float32_serving_and_says_why() -> None:
    pool = ModelPool(gate_registry(NoBf16LoadFamily(load_s=0)), PoolConfig(cpu_bf16="check"))
    try:
        model = asyncio.run(pool.load("gate"))
        assert model.dtype == "float32"
        assert model.dtype_reason == (
            "float32: the bf16 check failed (RuntimeError; the server log has why)"
        )
        (result,) = asyncio.run(pool.infer("gate", None, [_photo()], None)).results
        assert result["batch"] == 1
    finally:
        asyncio.run(pool.close())


def test_a_bf16_run_that_fails_leaves_float32_serving_and_says_why() -> None:
    family = NoBf16Family(load_s=0)
    pool = ModelPool(gate_registry(family), PoolConfig(cpu_bf16="check"))
    try:
        model = asyncio.run(pool.load("gate"))
        assert model.dtype == "float32"
        assert model.dtype_reason == (
            "float32: the bf16 check failed (RuntimeError; the server log has why)"
        )
        fp32, bf16 = family.cores
        assert bf16.closed and not fp32.closed  # the failed copy is released
        assert isinstance(fp32, GateCore)
        (result,) = asyncio.run(pool.infer("gate", None, [_photo()], None)).results
        assert result["batch"] == 1
    finally:
        asyncio.run(pool.close())


def _photo() -> Any:
    from PIL import Image

    return Image.new("RGB", (8, 4))
