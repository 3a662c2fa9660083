"""What every registered family promises, checked over the registry on the real app.

One parametrized test per promise instead of a copy per family: load and status, warm-up,
every output format against the response schema, the OpenAPI entry, a job answering exactly what
the synchronous endpoint answers, unload. Export parity of every family is in
``test_onnx_serving.py`` (``vision-api export --all`` gates each family's artifact).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from engines.registry import default_registry
from service.endpoints import discover_endpoints
from service.schemas.common import Endpoint
from tests.conftest import asset_b64

ENDPOINTS = discover_endpoints(default_registry())
# Per-image endpoints; tasks (a Depth Anything scene) keep their own promises, tested in
# test_depth_scene_http.py.
FAMILIES = sorted(name for name, endpoint in ENDPOINTS.items() if endpoint.task is None)


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=120) as client:
        yield client


def body_for(endpoint: Endpoint, **options: Any) -> dict[str, Any]:
    """The endpoint's documented example on two real photos, on the default (tiny) variant."""
    example = {k: v for k, v in endpoint.example.items() if k not in ("images", "variant")}
    return {"images": [asset_b64("chelsea.jpg"), asset_b64("camera.png")], **example, **options}


def output_formats(endpoint: Endpoint) -> tuple[str, ...]:
    """The values ``output_format`` takes in this family's options, if it has the field."""
    hints = typing.get_type_hints(endpoint.request, include_extras=True)
    hint = hints.get("output_format")
    while hint is not None and typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if hint is not None else ()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_load_status_and_unload(http: httpx.Client, model_type: str) -> None:
    loaded = http.post("/models/load", json={"model_type": model_type})
    assert loaded.status_code == 200, loaded.text
    entry = loaded.json()
    assert entry["loaded"] and entry["variant"] == "tiny" and entry["default"]
    assert entry["device"] == "cpu" and entry["engine"] == "torch" and entry["dtype"]
    assert entry["memory_mb"] > 0 and entry["placement"]
    status = {
        (m["model_type"], m["variant"]): m for m in http.get("/models/status").json()["models"]
    }
    assert status[(model_type, "tiny")]["loaded"]
    unloaded = http.post("/models/unload", json={"model_type": model_type}).json()
    assert {"model_type": model_type, "variant": "tiny"} in unloaded["unloaded"]
    status = {
        (m["model_type"], m["variant"]): m for m in http.get("/models/status").json()["models"]
    }
    assert not status[(model_type, "tiny")]["loaded"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_output_format_matches_the_response_schema(
    http: httpx.Client, model_type: str
) -> None:
    endpoint = ENDPOINTS[model_type]
    for fmt in output_formats(endpoint) or (None,):
        options = {} if fmt is None else {"output_format": fmt}
        response = http.post(f"/inference/{model_type}", json=body_for(endpoint, **options))
        assert response.status_code == 200, (fmt, response.text)
        decoded = msgspec.json.decode(response.content, type=endpoint.response, strict=True)
        assert decoded.model_type == model_type and decoded.variant == "tiny"
        assert len(decoded.results) == 2  # type: ignore[attr-defined]
        assert response.headers["x-request-id"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_openapi_documents_the_endpoint(http: httpx.Client, model_type: str) -> None:
    endpoint = ENDPOINTS[model_type]
    schema = http.get("/schema/openapi.json").json()
    operation = schema["paths"][f"/inference/{model_type}"]["post"]
    assert operation["summary"] == endpoint.summary
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    (ref,) = [part["$ref"] for part in body["allOf"]]
    assert ref.endswith(f"/{endpoint.request.__name__}")
    assert body["examples"] == [endpoint.example]
    properties = schema["components"]["schemas"][endpoint.request.__name__]["properties"]
    assert set(properties) == set(endpoint.request.__struct_fields__)
    submit = schema["paths"]["/jobs/submit/{model_type}"]["post"]["requestBody"]
    refs = [r["$ref"] for r in submit["content"]["application/json"]["schema"]["anyOf"]]
    assert ref in refs


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_job_answers_what_the_synchronous_endpoint_answers(
    http: httpx.Client, model_type: str
) -> None:
    body = body_for(ENDPOINTS[model_type])
    alias = model_type.replace("-", "_")  # aliases are accepted at submit too
    submitted = http.post(f"/jobs/submit/{alias}", json=body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["model_type"] == model_type
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := http.get(f"/jobs/{job_id}").json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "completed", job["error"]
    synchronous = http.post(f"/inference/{model_type}", json=body).json()
    assert job["result"]["model_type"] == model_type
    assert job["result"]["results"] == synchronous["results"]
