"""The memory budget: which resident models to unload so that another one fits.

The budget is per device (``VISION_API_MEMORY_BUDGET_MB``): the weights of the models resident
on a device may not exceed it. Making room unloads least recently used models first, but never
one that is serving a request, one that was preloaded, or one loaded less than
``min_residency_s`` ago (so two models alternating over a budget that holds one do not reload
on every request). When no such plan exists, the load is refused with a 503 that says why.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from engines.errors import UnavailableError


@dataclass(frozen=True)
class Resident:
    """What the plan needs to know of a model resident on the device.

    Attributes:
        key: The pool's key of the model.
        label: ``model_type/variant`` for messages.
        memory_mb: Its weights.
        busy: Serving a request now.
        pinned: Preloaded: never unloaded to make room.
        resident_s: Seconds since it was loaded.
        idle_s: Seconds since it last served (or was loaded).
    """

    key: Hashable
    label: str
    memory_mb: float
    busy: bool
    pinned: bool
    resident_s: float
    idle_s: float


def plan_room(
    label: str,
    needed_mb: float,
    budget_mb: float,
    residents: Sequence[Resident],
    min_residency_s: float,
) -> list[Hashable]:
    """The keys to unload, least recently used first, so that ``needed_mb`` more fits.

    Raises:
        UnavailableError: The model is larger than the whole budget, or not enough can be
            unloaded now (busy, preloaded or recently loaded models); ``retry_after_s`` says
            when trying again may succeed.
    """
    if needed_mb > budget_mb:
        raise UnavailableError(
            f"{label} needs about {needed_mb:.0f} MB, more than the memory budget of "
            f"{budget_mb:.0f} MB per device (VISION_API_MEMORY_BUDGET_MB); raise the budget or "
            "use a smaller variant."
        )
    used = sum(r.memory_mb for r in residents)
    if used + needed_mb <= budget_mb:
        return []
    evict: list[Hashable] = []
    for resident in sorted(residents, key=lambda r: r.idle_s, reverse=True):
        if resident.busy or resident.pinned or resident.resident_s < min_residency_s:
            continue
        evict.append(resident.key)
        used -= resident.memory_mb
        if used + needed_mb <= budget_mb:
            return evict
    waits = [min_residency_s - r.resident_s for r in residents if r.resident_s < min_residency_s]
    blocked = ", ".join(
        f"{r.label} ({'preloaded' if r.pinned else 'busy' if r.busy else 'just loaded'})"
        for r in residents
        if r.key not in evict
    )
    raise UnavailableError(
        f"Not enough room in the memory budget ({budget_mb:.0f} MB per device) for {label} "
        f"(about {needed_mb:.0f} MB): {used:.0f} MB stay resident ({blocked}). Retry later or "
        "unload a model.",
        retry_after_s=max(1, math.ceil(min(waits))) if waits else 5,
    )
