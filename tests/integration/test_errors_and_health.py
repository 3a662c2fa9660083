"""500s carry no internals but a request id; /health needs no torch; request ids round-trip."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    assert_clear_error,
    asset_b64,
    free_port,
    server_log,
    start_server,
    stop_server,
)

ROOT = Path(__file__).resolve().parents[2]
BLOCK_TORCH = '''
import sys


class _NoTorch:
    """This process behaves as if torch were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def torchless_server(
    tiny_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``vision-api serve`` on the tiny models in a process where ``import torch`` fails."""
    site = tmp_path_factory.mktemp("no-torch")
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    port = free_port()
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "VISION_API_REDIS_URL": "",
    }
    proc = start_server(["serve", "--config", str(tiny_config), "--port", str(port)], env, port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_health_answers_without_torch(
    torchless_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, _ = torchless_server
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200, health.text
    device = health.json()["device"]
    assert device["cuda_available"] is None and device["gpus"] is None


def test_a_500_names_the_model_and_the_request_id_not_the_exception_text(
    torchless_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = torchless_server
    response = httpx.post(
        f"{url}/inference/dinov3",
        json={"images": [asset_b64("chelsea.jpg")]},
        headers={"X-Request-ID": "req-500-check"},
        timeout=60,
    )
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["request_id"] == "req-500-check"
    assert response.headers["x-request-id"] == "req-500-check"
    assert "dinov3/tiny" in body["detail"] and "ModuleNotFoundError" in body["detail"]
    # The exception's own message and any path stay in the log.
    assert "No module named" not in body["detail"] and "Traceback" not in response.text
    proc.terminate()
    proc.wait(timeout=15)
    log = server_log(proc)
    assert "[req-500-check]" in log and "Traceback" in log and "No module named 'torch'" in log


def test_request_ids_are_echoed_or_generated(live_server: str) -> None:
    given = httpx.get(f"{live_server}/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = httpx.get(f"{live_server}/health").headers["x-request-id"]
    assert len(generated) == 32 and generated != "abc-123"
    unsafe = httpx.get(f"{live_server}/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_prompts_per_request_is_a_setting_enforced_before_any_work(tiny_config: Path) -> None:
    port = free_port()
    env = {"VISION_API_REDIS_URL": "", "VISION_API_MAX_PROMPTS_PER_REQUEST": "2"}
    proc = start_server(["serve", "--config", str(tiny_config), "--port", str(port)], env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        image = asset_b64("chelsea.jpg")
        for path in ("/inference/sam3", "/inference/grounding-dino", "/jobs/submit/sam3"):
            over = httpx.post(f"{url}{path}", json={"images": [image], "prompts": list("abc")})
            assert_clear_error(over, 413, "at most 2 (max_prompts_per_request)")
        within = httpx.post(
            f"{url}/inference/sam3", json={"images": [image], "prompts": ["a", "b"]}, timeout=60
        )
        assert within.status_code == 200, within.text
        assert httpx.get(f"{url}/jobs").json()["total"] == 0  # nothing was queued
    finally:
        stop_server(proc)


def test_missing_weights_are_a_503_that_says_how_to_provide_them(tmp_path: Path) -> None:
    """The default config on a machine without the weights (offline, empty HF cache)."""
    port = free_port()
    env = {
        "VISION_API_REDIS_URL": "",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),
    }
    proc = start_server(["serve", "--port", str(port)], env, port)
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/inference/dinov3",
            json={"images": [asset_b64("chelsea.jpg")]},
            timeout=60,
        )
        assert_clear_error(response, 503, "facebook/dinov3-vits16-pretrain-lvd1689m")
        detail = response.json()["detail"]
        assert "HF_HOME" in detail and "HF_TOKEN" in detail and "local directory" in detail
    finally:
        stop_server(proc)
