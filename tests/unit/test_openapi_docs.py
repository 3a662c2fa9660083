"""The OpenAPI schema documents every request: each body has an example that validates against
its msgspec type, and each of its fields (nested objects included) has a description."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.app import create_app
from service.schemas.depth_anything import DepthAnythingRequest, DepthSceneRequest
from service.schemas.dinov3 import Dinov3Request
from service.schemas.grounding_dino import GroundingDinoRequest
from service.schemas.models import ModelLoadRequest, ModelUnloadRequest
from service.schemas.sam3 import Sam3EmbedRequest, Sam3Request

REQUEST_TYPES: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        Sam3Request,
        Sam3EmbedRequest,
        GroundingDinoRequest,
        DepthAnythingRequest,
        DepthSceneRequest,
        Dinov3Request,
        ModelLoadRequest,
        ModelUnloadRequest,
    )
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi_schema.to_schema()


def _refs(node: Any) -> list[str]:
    """Component names referenced anywhere under ``node``."""
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        return found + [name for value in node.values() for name in _refs(value)]
    if isinstance(node, list):
        return [name for value in node for name in _refs(value)]
    return []


def _bodies(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(operation, JSON media object) of every request body."""
    return [
        (f"{method.upper()} {path}", body["content"]["application/json"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if (body := operation.get("requestBody"))
    ]


def _examples(media: dict[str, Any]) -> list[Any]:
    examples = list(media["schema"].get("examples", []))
    examples += [e["value"] for e in media.get("examples", {}).values()]
    if "example" in media:
        examples.append(media["example"])
    return examples


def test_every_request_body_has_examples_that_validate(schema: dict[str, Any]) -> None:
    bodies = _bodies(schema)
    assert len(bodies) >= 8
    for operation, media in bodies:
        types = [REQUEST_TYPES[name] for name in _refs(media["schema"])]
        assert types, f"{operation}: no request type referenced"
        examples = _examples(media)
        assert examples, f"{operation}: no example"
        for example in examples:
            errors = []
            for request_type in types:
                try:
                    msgspec.convert(example, request_type)
                    break
                except msgspec.ValidationError as exc:
                    errors.append(str(exc))
            else:
                pytest.fail(f"{operation}: example {example} does not validate: {errors}")


def test_every_request_field_has_a_description(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    pending = [name for _, media in _bodies(schema) for name in _refs(media["schema"])]
    seen: set[str] = set()
    undocumented = []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for field, spec in components[name].get("properties", {}).items():
            if "description" not in spec:
                undocumented.append(f"{name}.{field}")
            pending += _refs(spec)  # nested objects (image items) are part of the request
    assert {"Sam3Request", "Sam3ImageRef", "ModelLoadRequest"} <= seen
    assert not undocumented, f"fields without a description: {undocumented}"
