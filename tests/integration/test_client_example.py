"""The examples run against the tiny-checkpoint server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import plyfile
import trimesh

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "api_client_example.py"
SCENE_EXAMPLE = EXAMPLES / "depth_scene_to_ply.py"


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


def test_scene_example_writes_a_ply_and_a_glb(live_server: str, tmp_path: Path) -> None:
    ply, glb = tmp_path / "scene.ply", tmp_path / "scene.glb"
    done = subprocess.run(
        [sys.executable, str(SCENE_EXAMPLE), "--url", live_server, "--ply", str(ply)]
        + ["--glb", str(glb), "--max-points", "5000"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Three crops of one photo, each with its camera centre.
    assert len(re.findall(r"view \d: 360x400 px, camera centre \(", done.stdout)) == 3
    points = plyfile.PlyData.read(ply)["vertex"].count
    assert 0 < points <= 5000 and f"{ply}: {points} points" in done.stdout
    scene = trimesh.load(glb)
    assert sum(isinstance(g, trimesh.PointCloud) for g in scene.geometry.values()) == 1
    assert "trimesh.load" in done.stdout


def test_scene_example_fails_without_a_server(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCENE_EXAMPLE), "--url", "http://127.0.0.1:9"]
        + ["--ply", str(tmp_path / "scene.ply")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "FAILED" in done.stderr
    assert not (tmp_path / "scene.ply").exists()
