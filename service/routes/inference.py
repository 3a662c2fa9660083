"""``POST /inference/<model_type>``: one handler per registered family, built from its endpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from litestar import Router, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import Example
from litestar.params import Body

from service.inference import InferenceService
from service.routes.responses import INFERENCE_ERRORS
from service.schemas.common import Endpoint


def inference_handler(endpoint: Endpoint) -> HTTPRouteHandler:
    """The route handler of one endpoint: decode, run through the pool, answer in order."""
    name = endpoint.name

    async def handler(data: Any, inference: Any) -> Any:
        return await inference.run(name, data)

    body = Body(
        examples=[Example(summary=endpoint.example_summary, value=endpoint.example)]
        if endpoint.example
        else None
    )
    # Litestar reads the body type, the dependency and the response type from the annotations.
    handler.__annotations__ = {
        "data": Annotated[endpoint.request, body],
        "inference": NamedDependency[InferenceService],
        "return": endpoint.response,
    }
    handler.__name__ = handler.__qualname__ = name.replace("-", "_")
    handler.__doc__ = endpoint.description
    words = "".join(part.capitalize() for part in name.split("-"))
    return post(
        endpoint.path,
        status_code=200,
        summary=endpoint.summary,
        operation_id=f"Inference{words}{words}",
        responses=INFERENCE_ERRORS,
    )(handler)


def inference_router(endpoints: Iterable[Endpoint]) -> Router:
    """``/inference`` with one ``POST`` per endpoint."""
    return Router(
        path="/inference",
        route_handlers=[inference_handler(endpoint) for endpoint in endpoints],
        tags=["inference"],
    )
