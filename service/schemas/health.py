"""``GET /health/live`` and ``GET /health/ready``."""

from __future__ import annotations

from typing import Literal

import msgspec


class Liveness(msgspec.Struct, kw_only=True):
    """The process is up and its event loop answers."""

    status: Literal["alive"] = "alive"


class Readiness(msgspec.Struct, kw_only=True):
    """Start-up is done: preloaded models loaded and warmed, the job store answers."""

    status: Literal["ready"] = "ready"
