"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Servers and settings in the tests serve float32 on every CPU, so that results compared with
# transformers or ONNX do not depend on whether this machine has bf16 units. The bf16 check
# itself is tested with cpu_bf16 "check" (tests/unit/test_*: cpu_bf16_check_*).
os.environ.setdefault("VISION_API_CPU_BF16", "off")

ASSETS = Path(__file__).parent / "assets"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the screenshots the browser tests took under ``$CI_ARTIFACTS`` (CI sets it)."""
    base = os.environ.get("CI_ARTIFACTS")
    shots = sorted((Path(base) / "browser").glob("*.png")) if base else []
    if shots:
        terminalreporter.write_sep("-", "browser screenshots")
        for shot in shots:
            terminalreporter.write_line(str(shot))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder: tests/unit → unit, tests/integration → integration."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


def assert_clear_error(response: httpx.Response, status: int, needle: str) -> None:
    """A JSON error of ``status`` whose ``detail`` mentions ``needle``, without internals."""
    assert response.status_code == status, response.text
    assert needle.lower() in response.json()["detail"].lower()
    assert "Traceback" not in response.text


def onnx_op_types(path: Path) -> list[str]:
    """The op type of every node of an ONNX graph file, in order (weights not loaded)."""
    import onnx

    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


def asset_b64(name: str) -> str:
    """Base64 of a test photo."""
    return base64.b64encode((ASSETS / name).read_bytes()).decode()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory written by ``vision-api tiny-models``; its config is ``config.toml``."""
    from engines.tiny import write_tiny_models

    directory = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_config(tiny_models: Path) -> Path:
    """The config.toml that serves the tiny checkpoints."""
    return tiny_models / "config.toml"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    args: list[str], env: dict[str, str], port: int, timeout_s: float = 60
) -> subprocess.Popen[bytes]:
    """Start ``vision-api serve`` (or another CLI command) and wait for ``/health``.

    Its output goes to a file (:func:`server_log` reads it), never to a pipe: nobody drains a
    pipe while the tests run, and a server whose log fills one blocks on its next log line.
    """
    log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server_log(proc)[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


@pytest.fixture(scope="session")
def live_server(tiny_config: Path) -> Iterator[str]:
    """The real app under uvicorn (``vision-api serve``) on a free port, serving tiny models."""
    port = free_port()
    proc = start_server(
        ["serve", "--config", str(tiny_config), "--port", str(port)],
        {"VISION_API_REDIS_URL": ""},
        port,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """What a server started by :func:`start_server` has written so far."""
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
