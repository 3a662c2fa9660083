"""``examples/api_client_example.py`` runs against the tiny-checkpoint server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "api_client_example.py"


def test_example_runs_every_endpoint(live_server: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", live_server],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for endpoint in (
        "health",
        "sam3 [rle]",
        "sam3/embed",
        "grounding-dino",
        "depth-anything [png]",
        "dinov3",
        "models/load",
        "jobs",
        "errors: 404",
    ):
        assert endpoint in done.stdout, done.stdout


def test_example_fails_without_a_server() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "FAILED" in done.stderr
