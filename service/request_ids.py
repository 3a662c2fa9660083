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
from datetime import UTC, datetime

import msgspec
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


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors.

    Keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id`` (null
    outside a request), and ``exception`` (the traceback) when there is one.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, str | None] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        if entry["request_id"] == "-":
            entry["request_id"] = None
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return msgspec.json.encode(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# uvicorn installs handlers of its own on these; ours replace them so every line has one format
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker")


def configure_logging(level: int | str = logging.INFO, log_format: str = "text") -> None:
    """Log to stderr with the request id on every line.

    Args:
        level: The root level (a number or a name such as ``"info"``).
        log_format: ``text`` (a line for people) or ``json`` (one JSON object a line, for log
            collectors). Both carry the request id; neither ever holds a request's body.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        level = level if isinstance(level, int) else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
