"""Parity of the ONNX pipeline against the torch pipeline, on real photos, batch 1 and 4."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engines.artifacts import failed_gates
from engines.base import Family, FamilyExport, Pipeline, family_export, run_pipeline, run_task
from engines.errors import InvalidInputError, NotFoundError

DEFAULT_PHOTOS = ("chelsea.jpg", "astronaut.png", "coffee.png", "rocket.jpg")


class ParityError(RuntimeError):
    """A parity gate failed or an output was not finite."""


def exporter(family: Family) -> FamilyExport:
    """The family's export description (``EXPORT`` in its package's ``export.py``).

    Raises:
        NotFoundError: The family has no ONNX export.
    """
    export = family_export(family)
    if export is None:
        raise NotFoundError(f"{family.name} has no ONNX export yet; serve it with engine 'torch'.")
    return export


def default_images() -> list[Path]:
    """The project's test photos (``tests/assets``), when present."""
    root = Path(__file__).resolve().parents[1] / "tests" / "assets"
    return [root / name for name in DEFAULT_PHOTOS if (root / name).exists()]


@dataclass(frozen=True)
class ReferenceRuns:
    """The reference pipeline's results on the parity photos, one per (options, batch) run.

    Computed once and kept, so the reference model can be released before any ONNX session is
    built: full-size SAM3's float64 reference (6.8 GB of weights) and its ORT sessions (~9 GB
    with one image's activations) do not fit a 24 GB machine together.
    """

    images: list[Image.Image]
    runs: list[tuple[Any, int, list[dict[str, Any]]]]
    task_runs: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)


def reference_runs(
    family: Family, reference: Pipeline[Any], image_paths: Sequence[Path]
) -> ReferenceRuns:
    """Run ``reference`` with every parity option, batch 1 (each photo alone) and batch 4.

    Raises:
        ParityError: There are no photos to check on.
    """
    images = [Image.open(p).convert("RGB") for p in (image_paths or default_images())]
    if not images:
        raise ParityError("no photos to check parity on")
    export = exporter(family)
    runs = [
        (options, batch, run_pipeline(reference, images, options, max_batch_size=batch))
        for options in export.parity_options()
        for batch in (1, 4)
    ]
    task_runs = []
    for task, options in export.task_parity_options(images):
        try:
            reference.task(task)
        except InvalidInputError:  # this checkpoint has no such task (a mono depth model)
            continue
        task_runs.append((task, options, run_task(reference, task, images, options)))
    return ReferenceRuns(images, runs, task_runs)


def compare(
    family: Family,
    expected: ReferenceRuns,
    candidate: Pipeline[Any],
    *,
    enforce_gates: bool = True,
) -> dict[str, float]:
    """Run ``candidate`` as the reference ran; return the worst figure per metric.

    Non-finite outputs always fail; the family's gates fail only when ``enforce_gates``
    (fp32 artifacts).

    Raises:
        ParityError: A gate failed or an output was NaN/Inf.
    """
    export = exporter(family)
    worst: dict[str, float] = {}
    for options, batch, reference_results in expected.runs:
        got = run_pipeline(candidate, expected.images, options, max_batch_size=batch)
        if not _finite(got):
            raise ParityError(f"{family.name}: the ONNX pipeline produced NaN or Inf")
        _keep_worst(worst, export, export.parity_metrics(reference_results, got))
    for task, options, reference_result in expected.task_runs:
        got_task = run_task(candidate, task, expected.images, options)
        if not _finite(got_task):
            raise ParityError(f"{family.name}: the ONNX {task} produced NaN or Inf")
        _keep_worst(worst, export, export.task_parity_metrics(task, reference_result, got_task))
    if enforce_gates:
        failed = failed_gates(export.parity_gates, worst)
        if failed:
            raise ParityError(f"{family.name}: parity gates failed: {'; '.join(failed)}")
    return worst


def _keep_worst(worst: dict[str, float], export: FamilyExport, figures: dict[str, float]) -> None:
    """Fold ``figures`` into ``worst``: the lowest of ``>=`` gates, the highest of others."""
    for metric, value in figures.items():
        op = export.parity_gates.get(metric, ("<=", math.inf))[0]
        previous = worst.get(metric)
        if previous is None or (value < previous if op == ">=" else value > previous):
            worst[metric] = value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True
