"""URL fetching: the address guard, redirects re-checked, byte and time limits.

A local HTTP server plays the image store; loopback is refused by default, so the tests that
need to reach it allow-list exactly 127.0.0.1/32, the way an operator opens an internal store.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engines.errors import InvalidInputError, PayloadTooLargeError
from service.urlfetch import UrlFetcher, UrlPolicy
from tests.conftest import ASSETS

PHOTO = (ASSETS / "chelsea.jpg").read_bytes()


class Handler(BaseHTTPRequestHandler):
    routes = {
        "/photo.jpg": (200, {}, PHOTO),
        "/to-photo": (302, {"Location": "/photo.jpg"}, b""),
        "/to-private": (302, {"Location": "http://10.1.2.3/secret.png"}, b""),
        "/to-metadata": (301, {"Location": "http://169.254.169.254/latest/"}, b""),
        "/to-other-loopback": (307, {"Location": "http://127.0.0.2:1/x.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/missing": (404, {}, b"no"),
        "/big": (200, {}, b"x" * 5000),
    }

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            time.sleep(2)
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (the time-limit test)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetcher(**kwargs: object) -> UrlFetcher:
    settings = {
        "timeout_s": 5.0,
        "max_bytes": 10**6,
        "max_redirects": 3,
        "networks": ["127.0.0.1/32"],
    }
    settings.update(kwargs)
    return UrlFetcher(UrlPolicy.build(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("172.16.3.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_default_policy(address: str, allowed: bool) -> None:
    assert UrlPolicy().allows(ipaddress.ip_address(address)) is allowed


def test_allow_list_opens_a_network() -> None:
    policy = UrlPolicy.build(10, 100, 1, ["10.0.0.0/8"])
    assert policy.allows(ipaddress.ip_address("10.9.8.7"))
    assert not policy.allows(ipaddress.ip_address("192.168.0.1"))


async def test_loopback_refused_by_default(store: str) -> None:
    with pytest.raises(InvalidInputError, match="refused"):
        await fetcher(networks=[]).fetch(f"{store}/photo.jpg")


async def test_localhost_name_is_resolved_and_refused(store: str) -> None:
    port = store.rsplit(":", 1)[1]
    with pytest.raises(InvalidInputError, match="refused"):
        await fetcher(networks=[]).fetch(f"http://localhost:{port}/photo.jpg")


async def test_allowed_store_and_redirect(store: str) -> None:
    assert await fetcher().fetch(f"{store}/photo.jpg") == PHOTO
    assert await fetcher().fetch(f"{store}/to-photo") == PHOTO


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata", "/to-other-loopback"])
async def test_redirect_to_private_address_is_refused(store: str, path: str) -> None:
    with pytest.raises(InvalidInputError, match="refused"):
        await fetcher().fetch(f"{store}{path}")


async def test_redirect_loop_stops(store: str) -> None:
    with pytest.raises(InvalidInputError, match="Too many redirects"):
        await fetcher().fetch(f"{store}/loop")


async def test_http_error_status(store: str) -> None:
    with pytest.raises(InvalidInputError, match="HTTP 404"):
        await fetcher().fetch(f"{store}/missing")


async def test_byte_limit(store: str) -> None:
    with pytest.raises(PayloadTooLargeError, match="larger than 1000 bytes"):
        await fetcher(max_bytes=1000).fetch(f"{store}/big")


async def test_time_limit(store: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="longer than"):
        await fetcher(timeout_s=0.5).fetch(f"{store}/slow")
    assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://x/", "http:///nohost"])
async def test_bad_schemes_and_urls(url: str) -> None:
    with pytest.raises(InvalidInputError):
        await fetcher().fetch(url)
