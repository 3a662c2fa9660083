"""Who may call the API and how often: API keys, rate limits, CORS, and the schema saying so.

Everything is one Litestar plugin (:class:`SecurityPlugin`) that ``create_app`` registers: it
adds the key and rate-limit middleware, the CORS config when origins are listed, and, when keys
are configured, the two security schemes and their requirement on every protected operation.

Open without a key: the health probes (load balancers and orchestrators cannot hold keys) and
the documentation (``/docs``, ``/redoc``, ``/schema/*``, their assets) and the playground page
(``/playground``; its calls to the API carry the key typed into it), so people can read how to
call the API; the schema names no secrets. Keys are kept and compared only as SHA-256 digests, never
logged; a caller is identified to the rate limiter by a prefix of its key's digest.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import msgspec
from litestar import MediaType, Request, Response, Router
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, ControllerRouterHandler, Receive, Scope, Send

from service.ratelimit import RateLimiter, build_rate_limiter
from service.settings import Settings

HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
DOC_PATHS = frozenset({"/docs", "/redoc", "/playground"})
DOC_PREFIX = "/schema"
# The pages' own scripts and stylesheets (the playground calls the API with the key it is given).
ASSET_PREFIXES = ("/docs/assets/", "/playground/")
SCHEMES = {
    "bearerAuth": SecurityScheme(
        type="http",
        scheme="bearer",
        description="Authorization: Bearer <API key>",
    ),
    "apiKeyAuth": SecurityScheme(
        type="apiKey",
        name="X-API-Key",
        security_scheme_in="header",
        description="X-API-Key: <API key>",
    ),
}
# Either scheme admits the caller (OpenAPI: alternatives are separate requirement objects).
REQUIREMENTS: list[SecurityRequirement] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ApiKeys:
    """The accepted keys, as SHA-256 digests.

    Args:
        digests: The digests (32 bytes each) of the accepted keys.
    """

    def __init__(self, digests: Sequence[bytes]) -> None:
        self._digests = tuple(digests)

    @classmethod
    def load(cls, keys: Sequence[str], keys_file: str | None) -> ApiKeys:
        """Keys given in clear (``VISION_API_API_KEYS``) plus a file of hex digests.

        The file holds one SHA-256 hex digest per line (``printf %s KEY | sha256sum``); blank
        lines and ``#`` comments are skipped.

        Raises:
            ValueError: The file cannot be read or a line is not a digest (the message names
                the line, never its text: a key pasted there by mistake stays out of the logs).
        """
        digests = [hashlib.sha256(key.encode()).digest() for key in keys if key]
        if keys_file:
            path = Path(keys_file).expanduser()
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise ValueError(
                    f"Cannot read the API key file {path} ({type(exc).__name__})."
                ) from None
            for number, line in enumerate(lines, 1):
                text = line.split("#", 1)[0].strip().lower()
                if not text:
                    continue
                if not _DIGEST.match(text):
                    raise ValueError(
                        f"{path}, line {number}: not a SHA-256 hex digest (64 hex characters); "
                        "the file holds digests of keys, not keys."
                    )
                digests.append(bytes.fromhex(text))
        return cls(digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str) -> str | None:
        """The id of the key (a prefix of its digest) when ``presented`` is accepted, else None.

        The digest is compared with every accepted digest in constant time and without stopping
        at a match, so the time taken tells nothing about the key or which one matched.
        """
        digest = hashlib.sha256(presented.encode()).digest()
        matched: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                matched = known
        return matched.hex()[:16] if matched is not None else None


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The keys a request carries: ``Authorization: Bearer KEY`` and ``X-API-Key: KEY``."""
    keys = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                keys.append(token.strip())
        elif lowered == b"x-api-key" and value.strip():
            keys.append(value.decode("latin-1").strip())
    return keys


def _is_docs(path: str) -> bool:
    return (
        path in DOC_PATHS
        or path == DOC_PREFIX
        or path.startswith((DOC_PREFIX + "/", *ASSET_PREFIXES))
    )


async def _refuse(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = msgspec.json.encode({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def security_middleware(keys: ApiKeys, limiter: RateLimiter | None) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware: 401 without an accepted key (when keys are set), 429 over the rate.

    Runs after routing, so it decides by the matched route's template (``/health`` and
    ``/health/`` alike), and before the body is read: a refused request costs no upload.
    """

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            path = str(scope.get("path_template") or scope.get("path", ""))
            # CORS preflights carry no credentials by design; health probes hold no keys.
            if scope["type"] != "http" or path in HEALTH_PATHS or scope.get("method") == "OPTIONS":
                await app(scope, receive, send)
                return
            client = scope.get("client")
            identity = f"address:{client[0] if client else 'unknown'}"
            if keys and not _is_docs(path):
                key_id = next(
                    (i for k in presented_keys(scope["headers"]) if (i := keys.identify(k))), None
                )
                if key_id is None:
                    await _refuse(
                        send,
                        401,
                        "Missing or invalid API key: send Authorization: Bearer <key> or "
                        "X-API-Key: <key>.",
                        {"www-authenticate": "Bearer"},
                    )
                    return
                identity = f"key:{key_id}"
            if limiter is not None:
                verdict = await limiter.hit(identity)
                if not verdict.allowed:
                    who = "API key" if identity.startswith("key:") else "client address"
                    await _refuse(
                        send,
                        429,
                        f"Rate limit of {limiter.rate.count} requests per "
                        f"{limiter.rate.period_s} s exceeded for this {who}; retry in "
                        f"{verdict.retry_after_s} s.",
                        {"retry-after": str(verdict.retry_after_s)},
                    )
                    return
            await app(scope, receive, send)

        return middleware

    return wrap


class SecurityPlugin(InitPluginProtocol):
    """Keys, rate limit and CORS from ``settings.security``, added to the app at its start.

    Args:
        settings: The app's settings (the limiter shares the job queue's Redis and prefix).

    Raises:
        ValueError: The key file is unreadable or malformed, or the rate limit is malformed.
    """

    def __init__(self, settings: Settings) -> None:
        security = settings.security
        self.keys = ApiKeys.load(security.api_keys, security.api_keys_file)
        self.limiter = build_rate_limiter(
            security.rate_limit, settings.jobs.redis_url or None, settings.jobs.redis_key_prefix
        )
        self.cors_origins = list(security.cors_origins)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the middleware, CORS and the schema's security declarations."""
        if self.keys or self.limiter is not None:
            app_config.middleware.append(security_middleware(self.keys, self.limiter))
        if self.limiter is not None:
            app_config.on_shutdown.append(self.limiter.close)
        if self.cors_origins:
            app_config.cors_config = CORSConfig(
                allow_origins=self.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
                expose_headers=["x-request-id", "retry-after"],
            )
        if self.keys:
            _declare_security(app_config)
        # Hostile bodies: a JSON body nested thousands deep makes the decoder raise
        # RecursionError before any schema sees it; that is the client's error, not a 500.
        app_config.exception_handlers = {
            **app_config.exception_handlers,
            RecursionError: too_deep_handler,
        }
        return app_config


def too_deep_handler(_: Request, __: RecursionError) -> Response:
    """A 400 for a request body nested deeper than the JSON decoder recurses."""
    return Response(
        {"detail": "Invalid request: the JSON body is nested too deeply to decode."},
        status_code=400,
        media_type=MediaType.JSON,
    )


def _declare_security(app_config: AppConfig) -> None:
    """Declare both schemes and require one on every operation the middleware protects."""
    if app_config.openapi_config is not None:
        # A shallow copy: re-running OpenAPIConfig's __init__ would warn about its deprecated
        # fields, and the caller's config object stays as it was given.
        config = copy.copy(app_config.openapi_config)
        merged = config.components
        assert not isinstance(merged, list)  # OpenAPIConfig.__post_init__ merged the list
        config.components = replace(
            merged, security_schemes={**(merged.security_schemes or {}), **SCHEMES}
        )
        app_config.openapi_config = config
    open_handlers: list[ControllerRouterHandler] = []
    protected: list[ControllerRouterHandler] = []
    for handler in app_config.route_handlers:
        is_open = isinstance(handler, HTTPRouteHandler) and all(
            p in HEALTH_PATHS or _is_docs(p) for p in handler.paths
        )
        (open_handlers if is_open else protected).append(handler)
    app_config.route_handlers = [
        *open_handlers,
        Router("/", route_handlers=protected, security=REQUIREMENTS),
    ]
