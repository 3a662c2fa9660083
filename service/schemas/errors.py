"""The body of every error response, as ``service/errors.py`` writes it."""

from __future__ import annotations

import msgspec


class ErrorItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One problem of a request that failed validation."""

    message: str
    key: str | None = None
    source: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An error: what went wrong and what to do, in ``detail``.

    ``errors`` lists each validation problem (400); ``request_id`` finds a 5xx in the server
    log.
    """

    detail: str
    errors: list[ErrorItem] | None = None
    request_id: str | None = None
