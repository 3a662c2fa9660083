"""Parity of the ONNX pipeline against the torch pipeline, on real photos, batch 1 and 4."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engines.artifacts import failed_gates
from engines.base import Family, FamilyExport, Pipeline, family_export, run_pipeline
from engines.errors import NotFoundError

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
    runs = [
        (options, batch, run_pipeline(reference, images, options, max_batch_size=batch))
        for options in exporter(family).parity_options()
        for batch in (1, 4)
    ]
    return ReferenceRuns(images, runs)


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
        for metric, value in export.parity_metrics(reference_results, got).items():
            op = export.parity_gates.get(metric, ("<=", math.inf))[0]
            previous = worst.get(metric)
            if previous is None or (value < previous if op == ">=" else value > previous):
                worst[metric] = value
    if enforce_gates:
        failed = failed_gates(export.parity_gates, worst)
        if failed:
            raise ParityError(f"{family.name}: parity gates failed: {'; '.join(failed)}")
    return worst


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True
