"""/docs, /redoc and /playground over HTTP: every asset they reference is served by the app
(same origin, no CDN), answers 200 with the right content type, and stays open under API keys."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.integration.conftest_jobs import serve_app, settings_for

PAGES = ("/docs", "/redoc", "/playground")
KEY = "k-playground-5e1f"
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def references(html: str, base: str) -> list[str]:
    """Every URL a page loads or links to (src= and href=), made absolute."""
    return [urljoin(base, ref) for ref in _REFERENCE.findall(html)]


def expected_type(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix
    return {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}.get(
        suffix, "text/html"
    )


@pytest.mark.parametrize("page", PAGES)
def test_pages_reference_only_same_origin_assets_that_answer(live_server: str, page: str) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        response = client.get(page)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        urls = references(html, f"{live_server}{page}")
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts, f"{page} loads no script"
        for url in urls:
            assert url.startswith(live_server + "/"), f"{page} references {url}"
            asset = client.get(url)
            assert asset.status_code == 200, (url, asset.text[:200])
            assert asset.headers["content-type"].startswith(expected_type(url)), url
            assert len(asset.content) > 100, url


def test_docs_use_the_packaged_swagger_and_redoc(live_server: str) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        docs = client.get("/docs").text
        redoc = client.get("/redoc").text
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        standalone = client.get("/docs/assets/redoc.standalone.js")
    assert "/docs/assets/swagger-ui-bundle.js" in docs
    assert "/docs/assets/swagger-ui-standalone-preset.js" in docs
    assert "/docs/assets/swagger-ui.css" in docs
    assert "/docs/assets/redoc.standalone.js" in redoc
    assert "fonts.googleapis" not in redoc
    assert "SwaggerUIBundle" in bundle.text
    assert "Redoc" in standalone.text
    assert "cdn.redoc.ly" not in standalone.text  # its footer logo is served from here
    assert bundle.headers["cache-control"] == "max-age=3600"


@pytest.mark.parametrize(
    "path", ["/docs/assets/nothing.js", "/docs/assets/..%2Fsecurity.py", "/playground/index.py"]
)
def test_unknown_assets_are_404_with_detail(live_server: str, path: str) -> None:
    response = httpx.get(f"{live_server}{path}", timeout=30)
    assert response.status_code == 404
    assert response.json()["detail"]  # a clear 404, never the file (no path reaches the disk)


def test_playground_says_no_key_is_needed_when_none_is_configured(live_server: str) -> None:
    html = httpx.get(f"{live_server}/playground", timeout=30).text
    assert 'data-auth="none"' in html


async def test_docs_and_playground_are_open_under_api_keys(tiny_config: Path) -> None:
    async with serve_app(settings_for(tiny_config, api_keys=KEY, redis_url="")) as client:
        for path in (
            *PAGES,
            "/docs/assets/swagger-ui.css",
            "/docs/assets/redoc.standalone.js",
            "/playground/app.js",
            "/playground/style.css",
        ):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:200])
        assert 'data-auth="required"' in (await client.get("/playground")).text
        # What the playground calls is not open: it sends the key typed into it.
        assert (await client.get("/models/status")).status_code == 401
        status = await client.get("/models/status", headers={"X-API-Key": KEY})
        assert status.status_code == 200
