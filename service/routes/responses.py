"""The error answers each route documents in the OpenAPI schema (``responses=``).

``service/errors.py`` writes every error as an ``ErrorBody``; a route lists the statuses it can
answer so that clients (and the schemathesis fuzz run) see every one documented.
"""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from service.schemas.errors import ErrorBody

MEANINGS = {
    400: "Invalid request: `detail` says which field and why; `errors` lists each problem.",
    404: "Unknown model type, variant, engine, checkpoint, image id or job.",
    409: "The model is not loaded and lazy loading is off: load it with POST /models/load.",
    413: "Too large: the body, the number of images or an image's pixels.",
    500: "The model failed; `request_id` finds the traceback in the server log.",
    503: "Not now: busy, out of model memory or the job store is down; retry after "
    "`Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route that can answer ``statuses`` (an ``ErrorBody`` each)."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody, description=MEANINGS[status], generate_examples=False
        )
        for status in statuses
    }


INFERENCE_ERRORS = error_responses(400, 404, 409, 413, 500, 503)
