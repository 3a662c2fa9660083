"""Request ids: taken from ``X-Request-ID`` or generated, echoed back, on every log line.

The id lives in a context variable, so it follows the request into the pool's worker threads
(the pool runs each step in a copy of the request's context) and onto each log record through
:class:`RequestIdFilter`.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
# A caller's id is kept when it is short and printable; anything else is replaced.
_VALID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return request_id.get()


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: set the request id for the request and echo it in the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.decode("latin-1") == HEADER),
            "",
        )
        rid = given if _VALID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message)[HEADER] = rid
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)

    return middleware


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (``-`` outside a request) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        record.request_id = request_id.get() or "-"
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr with the request id on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
