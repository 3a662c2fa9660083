"""The one exception the client raises for an error response."""

from __future__ import annotations

from typing import Any

import httpx


class VisionAPIError(Exception):
    """The server answered an error (4xx / 5xx).

    Attributes:
        status: The HTTP status code.
        detail: The server's ``detail``: what went wrong and what to do.
        request_id: The ``X-Request-ID`` the server answered (finds a 5xx in its log).
        errors: Each validation problem of a 400 (``message``, ``key``, ``source``), if any.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        request_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.errors = errors or []

    @classmethod
    def from_response(cls, response: httpx.Response) -> VisionAPIError:
        """The error an error response describes (its JSON body, else its text)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            detail = str(body.get("detail") or response.reason_phrase)
            errors = body.get("errors") if isinstance(body.get("errors"), list) else None
            request_id = body.get("request_id") or response.headers.get("x-request-id")
        else:
            detail, errors = response.text or response.reason_phrase, None
            request_id = response.headers.get("x-request-id")
        return cls(response.status_code, detail, request_id, errors)
