"""``/playground``: a page to try every model from a browser, served with no external asset.

The page, its script and its stylesheet are package data (``service/static/playground``). The
page calls the public API only (``GET /``, ``/models/status``, ``/schema/openapi.json``,
``POST /inference/<type>``, ``/jobs``), so it shows exactly what a client would get.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.di import NamedDependency

from engines.errors import NotFoundError
from service.routes.system import static_response
from service.settings import Settings

PLAYGROUND_PATH = "/playground"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"
ASSETS: dict[str, tuple[Path, str]] = {
    "app.js": (STATIC_DIR / "app.js", "text/javascript; charset=utf-8"),
    "style.css": (STATIC_DIR / "style.css", "text/css; charset=utf-8"),
}


@get(PLAYGROUND_PATH, include_in_schema=False, media_type=MediaType.HTML)
async def playground(settings: NamedDependency[Settings]) -> Response[bytes]:
    """The playground page; it shows an API key input when the server requires keys."""
    keys = bool(settings.security.api_keys or settings.security.api_keys_file)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{auth}}", "required" if keys else "none")
    return Response(page.encode(), media_type=MediaType.HTML)


@get(f"{PLAYGROUND_PATH}/{{name:str}}", include_in_schema=False)
async def playground_asset(name: str) -> Response[bytes]:
    """The playground's script or stylesheet (a fixed list; 404 for any other)."""
    if name not in ASSETS:
        raise NotFoundError(f"No playground asset named {name!r}.")
    path, media_type = ASSETS[name]
    return static_response(path.read_bytes(), media_type)
