"""The one place where errors become HTTP responses.

Domain errors (``engines.errors``) map to the status codes of the API contract; Litestar's own
HTTP exceptions keep their code with a plain ``detail``; anything else is logged with its
traceback and answered with a 500 that names no internals.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from engines.errors import (
    InferenceError,
    InvalidInputError,
    ModelNotLoadedError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    VisionError,
)
from service.request_ids import current_request_id

log = logging.getLogger(__name__)

STATUS = {
    InvalidInputError: 400,
    NotFoundError: 404,
    ModelNotLoadedError: 409,
    PayloadTooLargeError: 413,
    InferenceError: 500,
    UnavailableError: 503,
}


def _json(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return Response(
        {"detail": detail, **extra},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def vision_error_handler(_: Request, exc: VisionError) -> Response:
    """Domain errors: the mapped status and the error's own detail."""
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    headers = None
    if isinstance(exc, UnavailableError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    if status >= 500:  # the log has the traceback under this id
        return _json(status, exc.detail, headers, request_id=current_request_id())
    return _json(status, exc.detail, headers)


def validation_error_handler(request: Request, exc: ValidationException) -> Response:
    """Body/parameter validation: a 400 whose detail says which field is wrong and why."""
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message, key = item.get("message", ""), item.get("key")
            located = key and key != "data" and key not in message
            problems.append(f"{key}: {message}" if located else message)
    detail = "; ".join(p for p in problems if p) or exc.detail
    if "JSON is malformed" in detail or "malformed" in detail.lower():
        detail = f"Request body is not valid JSON: {detail}"
    return _json(400, f"Invalid request: {detail}", errors=exc.extra or None)


def http_error_handler(_: Request, exc: HTTPException) -> Response:
    """Litestar's HTTP exceptions (404 route, 405, 413 body size...) with a plain detail."""
    detail = exc.detail
    if exc.status_code == 400:
        detail = f"Invalid request: {detail}"
    elif exc.status_code == 413:
        detail = f"Request body too large: {detail}"
    return _json(exc.status_code, detail, exc.headers)


def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Anything unexpected: logged with its traceback, a 500 without internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(
        500,
        "Internal server error; the server log has the details.",
        request_id=current_request_id(),
    )


EXCEPTION_HANDLERS = {
    VisionError: vision_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
