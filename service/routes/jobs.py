"""``/jobs``: async job submission and polling."""

from __future__ import annotations

from litestar import Controller


class JobsController(Controller):
    """Submit, poll, list, cancel."""

    path = "/jobs"
    tags = ["jobs"]
