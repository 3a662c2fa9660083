"""A corpus of hostile and broken inputs against the real server.

Each case gets its documented 4xx with a ``detail`` that says what is wrong, no traceback, no
path or library message; nothing private is fetched (a recording HTTP server on loopback counts
every request it receives); the server is healthy after every case. Bodies over the size limit
are refused before they are read whole, and decompression bombs before they are inflated.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ASSETS, asset_b64
from tests.integration.conftest_jobs import serve_app, settings_for

PHOTO = (ASSETS / "chelsea.jpg").read_bytes()
MB = 2**20


# --- hostile files -----------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, extra: bytes = b"", idat: bytes | None = None) -> bytes:
    """A greyscale PNG whose header says ``width`` x ``height``, with whatever IDAT is given."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 64) if idat is None else idat
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def saved(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD declares ``width`` x ``height`` 8-bit grey pixels."""
    tags = [
        (256, 4, width),  # ImageWidth, LONG
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: black is zero
        (273, 4, 8),  # StripOffsets
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags
    )
    return b"II*\0" + struct.pack("<I", 24) + b"\0" * 16 + ifd + b"\0\0\0\0"


def inflating_to(size: int) -> bytes:
    """A zlib stream of a few hundred kB that inflates to ``size`` bytes."""
    compressor = zlib.compressobj(9)
    block = b"a" * MB
    return b"".join(compressor.compress(block) for _ in range(size // MB)) + compressor.flush()


# Inflates to 200 MB: as a zTXt (text) chunk and as an iCCP (colour profile) chunk.
INFLATES = inflating_to(200 * MB)
HUGE_JPEG = bytes.fromhex("ffd8ffc0001108ffffffff03012200021101031101ffd9")  # 65535x65535
HUGE_GIF = (
    b"GIF89a"
    + struct.pack("<HH", 65535, 65535)
    + b"\0\0\0,"
    + struct.pack("<HHHH", 0, 0, 65535, 65535)
    + b"\0\x02\x02\x44\x01\0;"
)
HUGE_BMP = (
    b"BM"
    + struct.pack("<IHHI", 54, 0, 0, 54)
    + struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)
)
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<image href="http://169.254.169.254/latest/meta-data/"/></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(/etc/passwd) (r) file\nshowpage\n"
HTML = b"<html><script>alert(1)</script></html>"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def images(*items: Any) -> dict[str, Any]:
    return {"images": list(items)}


# (id, path, JSON body or raw bytes, status, a word the detail must contain)
DINO = "/inference/dinov3"
CORPUS: list[tuple[str, str, Any, int, str]] = [
    # decompression bombs and huge dimensions in tiny files: 413 before any pixel is allocated
    ("png 20000x20000 bomb", DINO, images(b64(png(20000, 20000))), 413, "pixels"),
    ("png 10000x10000 header", DINO, images(b64(png(10000, 10000))), 413, "pixels"),
    ("png 1x100000000", DINO, images(b64(png(1, 100_000_000))), 413, "pixels"),
    (
        "png zTXt inflating to 200 MB",
        DINO,
        images(b64(png(8, 8, _chunk(b"zTXt", b"k\0\0" + INFLATES)))),
        413,
        "decompression bomb",
    ),
    (
        "png iCCP inflating to 200 MB",
        DINO,
        images(b64(png(8, 8, _chunk(b"iCCP", b"p\0\0" + INFLATES)))),
        413,
        "decompression bomb",
    ),
    ("jpeg 65535x65535 in 23 bytes", DINO, images(b64(HUGE_JPEG)), 413, "pixels"),
    ("gif 65535x65535 in 29 bytes", DINO, images(b64(HUGE_GIF)), 413, "pixels"),
    ("bmp 60000x60000 header", DINO, images(b64(HUGE_BMP)), 413, "pixels"),
    (
        "tiff 100000x100000 header",
        DINO,
        images(b64(tiff_header_only(100_000, 100_000))),
        413,
        "pixels",
    ),
    # truncated, empty and zero-size images
    ("png truncated in its header", DINO, images(b64(png(64, 64)[:30])), 400, "decodable"),
    ("png without pixel data", DINO, images(b64(png(64, 64, idat=b""))), 400, "decodable"),
    ("jpeg truncated mid-scan", DINO, images(b64(PHOTO[: len(PHOTO) // 3])), 400, "decodable"),
    ("png 0x0", DINO, images(b64(png(0, 0))), 400, "decodable"),
    ("empty image", DINO, images(""), 400, "empty"),
    ("empty data field", DINO, images({"data": ""}), 400, "empty"),
    # formats that are not the documented rasters
    ("svg with an external image", DINO, images(b64(SVG)), 400, "decodable"),
    ("pdf", DINO, images(b64(PDF)), 400, "decodable"),
    ("eps reading a file", DINO, images(b64(EPS)), 400, "decodable"),
    (
        "ico (Pillow reads it; not offered)",
        DINO,
        images(b64(saved(Image.new("RGB", (16, 16)), "ICO"))),
        400,
        "decodable",
    ),
    (
        "ppm (Pillow reads it; not offered)",
        DINO,
        images(b64(saved(Image.new("RGB", (16, 16)), "PPM"))),
        400,
        "decodable",
    ),
    ("html", DINO, images(b64(HTML)), 400, "decodable"),
    # base64 and data URIs
    ("base64 with invalid characters", DINO, images("iVBORw0KGgo$$$!!"), 400, "base64"),
    ("base64 with broken padding", DINO, images("abc"), 400, "base64"),
    ("data uri of text/html", DINO, images("data:text/html;base64," + b64(HTML)), 400, "decodable"),
    ("data uri of svg", DINO, images("data:image/svg+xml;base64," + b64(SVG)), 400, "decodable"),
    ("data uri without base64", DINO, images("data:image/png,abcd"), 400, "base64 data URIs"),
    ("javascript uri", DINO, images("javascript:alert(1)"), 400, "base64"),
    ("scheme-relative url", DINO, images("//127.0.0.1/x.png"), 400, "base64"),
    # SSRF spellings: refused before any connection
    ("decimal ip", DINO, images("http://2130706433/x.png"), 400, "refused"),
    ("hex ip", DINO, images("http://0x7f000001/x.png"), 400, "refused"),
    ("octal ip", DINO, images("http://0177.0.0.1/x.png"), 400, "url"),
    ("short ip", DINO, images("http://127.1/x.png"), 400, "refused"),
    ("zero address", DINO, images("http://0.0.0.0/x.png"), 400, "refused"),
    ("ipv6 loopback", DINO, images("http://[::1]/x.png"), 400, "refused"),
    ("ipv4-mapped ipv6", DINO, images("http://[::ffff:127.0.0.1]/x.png"), 400, "refused"),
    ("ipv4-mapped hex", DINO, images("http://[::ffff:a9fe:a9fe]/latest/"), 400, "refused"),
    ("ipv4-compatible ipv6", DINO, images("http://[::127.0.0.1]/x.png"), 400, "refused"),
    ("nat64 of the metadata address", DINO, images("http://[64:ff9b::a9fe:a9fe]/"), 400, "refused"),
    ("6to4 of a private address", DINO, images("http://[2002:a00:1::]/x.png"), 400, "refused"),
    ("localhost with a trailing dot", DINO, images("http://localhost./x.png"), 400, "localhost"),
    (
        "userinfo before a loopback host",
        DINO,
        images("http://example.com@127.0.0.1/"),
        400,
        "refused",
    ),
    ("fragment hiding the host", DINO, images("http://127.0.0.1#@example.com/"), 400, "refused"),
    (
        "aws metadata",
        DINO,
        images({"url": "http://169.254.169.254/latest/meta-data/"}),
        400,
        "refused",
    ),
    ("ipv6 unique-local metadata", DINO, images("http://[fd00:ec2::254]/"), 400, "refused"),
    ("private network", DINO, images("http://10.0.0.1/x.png"), 400, "refused"),
    ("redis port", DINO, images("HTTP://127.0.0.1:6379/"), 400, "refused"),
    ("gopher to redis", DINO, images("gopher://127.0.0.1:6379/_INFO"), 400, "scheme"),
    ("file url", DINO, images({"url": "file:///etc/passwd"}), 400, "scheme"),
    ("url without host", DINO, images("http:///x.png"), 400, "no host"),
    # JSON that is not the schema
    (
        "unknown top-level field",
        DINO,
        {**images(asset_b64("chelsea.jpg")), "__proto__": {}},
        400,
        "__proto__",
    ),
    (
        "unknown field in an image item",
        DINO,
        images({"data": "x", "path": "/etc/passwd"}),
        400,
        "path",
    ),
    ("image item of the wrong type", DINO, images(123), 400, "images[0]"),
    ("image_id where none is accepted", DINO, images({"image_id": "x"}), 400, "sam3"),
    ("body is an array", DINO, b"[1, 2]", 400, "object"),
    ("body is null", DINO, b"null", 400, "object"),
    (
        "NaN",
        "/inference/sam3",
        b'{"images": ["x"], "prompts": ["a"], "threshold": NaN}',
        400,
        "json",
    ),
    (
        "number out of range",
        "/inference/sam3",
        b'{"images": ["x"], "prompts": ["a"], "threshold": 1e999}',
        400,
        "range",
    ),
    ("not utf-8", DINO, b'{"images": ["\xff\xfe"]}', 400, "utf-8"),
    (
        "deeply nested array",
        DINO,
        b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "nested",
    ),
    (
        "deeply nested object",
        DINO,
        b'{"images": [], "x": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        400,
        "nested",
    ),
    ("33 prompts", "/inference/sam3", {**images("x"), "prompts": ["cat"] * 33}, 400, "prompts"),
    (
        "a 10000-character prompt",
        "/inference/sam3",
        {**images("x"), "prompts": ["a" * 10_000]},
        400,
        "prompts[0]",
    ),
    ("17 images", DINO, images(*[asset_b64("chelsea.jpg")] * 17), 413, "at most 16"),
    (
        "variant with a path",
        DINO,
        {**images("x"), "variant": "../../../etc/passwd"},
        404,
        "unknown variant",
    ),
    ("model type with a path", "/jobs/submit/..%2f..%2fetc", images("x"), 404, "not found"),
]


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


def assert_clean_refusal(response: httpx.Response, status: int, needle: str) -> None:
    """``status`` with a ``detail`` naming ``needle``; no traceback, path or library text."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert needle.lower() in body["detail"].lower(), body["detail"]
    for leak in ("Traceback", "site-packages", "/work/", "/tmp/", "PIL.", "msgspec."):
        assert leak not in response.text, leak


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_hostile_input_gets_its_4xx(
    http: httpx.Client, path: str, body: Any, status: int, needle: str
) -> None:
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert_clean_refusal(response, status, needle)
    assert http.get("/health").status_code == 200


def test_healthy_and_still_working_after_the_corpus(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "ok"
    response = http.post(DINO, json=images(asset_b64("chelsea.jpg")))
    assert response.status_code == 200, response.text


# --- bodies over the size limit (64 MB by default) ---------------------------------------------
def _raw_request(url: str, head: bytes, parts: Iterator[bytes]) -> bytes:
    """Send ``head`` then ``parts`` on a socket, stopping when the server has answered; the
    response (a JSON error: its body ends the read)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: it will not read the rest
                break
        received = b""
        while not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def _rss_mb(http: httpx.Client) -> float:
    return float(http.get("/health").json()["memory"]["process_rss_mb"])


def test_80_mb_body_is_413_before_it_is_read(http: httpx.Client, live_server: str) -> None:
    """Content-Length says 80 MB: the answer comes after 1 MB of it, without the rest."""
    head = (
        b"POST /inference/dinov3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (80 * MB)
    )
    response = _raw_request(live_server, head, iter([b"{" + b" " * MB]))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"detail":"Request body too large' in response

    whole = http.post(DINO, content=b" " * (80 * MB), headers={"content-type": "application/json"})
    assert whole.status_code == 413 and "too large" in whole.json()["detail"].lower()


def test_chunked_80_mb_body_is_counted_while_streaming(
    http: httpx.Client, live_server: str
) -> None:
    """No Content-Length: the count stops the read at the limit, and memory stays bounded."""
    head = (
        b"POST /inference/dinov3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    block = b"%x\r\n" % MB + b"a" * MB + b"\r\n"
    before = _rss_mb(http)
    for _ in range(3):
        response = _raw_request(live_server, head, iter([block] * 80))
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
    # Three 80 MB bodies read whole would be 240 MB; the limit keeps each under 64 MB and
    # frees it. The bound leaves room for allocator slack, not for a body.
    assert _rss_mb(http) - before < 150
    assert http.get("/health").status_code == 200


# --- URLs that lead somewhere private ----------------------------------------------------------
class Recorder(BaseHTTPRequestHandler):
    """Serves a photo and redirects into private ranges; remembers every path asked for."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Any:
    handler = type("Handler", (Recorder,), {"routes": routes, "hits": []})
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def private_target() -> Iterator[Any]:
    """A 'private' server on 127.0.0.2: no request may ever reach it."""
    server = _serve("127.0.0.2", {"/secret.png": (200, {}, PHOTO)})
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def store(private_target: Any) -> Iterator[Any]:
    """An image store on 127.0.0.1 whose redirects lead into private ranges."""
    secret_port = private_target.server_address[1]
    redirects = {
        "/to-other-loopback": f"http://127.0.0.2:{secret_port}/secret.png",
        "/to-decimal-loopback": f"http://2130706434:{secret_port}/secret.png",  # 127.0.0.2
        "/to-mapped-loopback": f"http://[::ffff:127.0.0.2]:{secret_port}/secret.png",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
        "/to-private": "http://10.1.2.3/secret.png",
        "/to-nat64-private": "http://[64:ff9b::a01:203]/secret.png",
        "/to-ipv6-loopback": f"http://[::1]:{secret_port}/secret.png",
        "/to-file": "file:///etc/passwd",
        "/loop": "/loop",
    }
    routes = {path: (302, {"Location": target}, b"") for path, target in redirects.items()}
    routes["/photo.jpg"] = (200, {"Content-Type": "image/jpeg"}, PHOTO)
    routes["/to-photo"] = (302, {"Location": "/photo.jpg"}, b"")
    server = _serve("127.0.0.1", routes)
    yield server
    server.shutdown()


def test_loopback_store_is_refused_without_a_request(http: httpx.Client, store: Any) -> None:
    """The default guard refuses loopback: the store never sees the request."""
    url = f"http://127.0.0.1:{store.server_address[1]}"
    store.RequestHandlerClass.hits.clear()
    for path in ("/photo.jpg", "/to-metadata", "/to-other-loopback"):
        response = http.post(DINO, json=images(url + path))
        assert_clean_refusal(response, 400, "refused")
    assert store.RequestHandlerClass.hits == []


REDIRECT_CASES = [
    ("/to-other-loopback", "refused"),
    ("/to-decimal-loopback", "refused"),
    ("/to-mapped-loopback", "refused"),
    ("/to-metadata", "refused"),
    ("/to-private", "refused"),
    ("/to-nat64-private", "refused"),
    ("/to-ipv6-loopback", "refused"),
    ("/to-file", "scheme"),
    ("/loop", "too many redirects"),
]


async def test_redirects_into_private_ranges_are_refused(
    tiny_config: Path, store: Any, private_target: Any
) -> None:
    """With 127.0.0.1/32 allow-listed (an operator's internal store), the store is fetched,
    and every redirect out of it into another private address is refused at that hop."""
    url = f"http://127.0.0.1:{store.server_address[1]}"
    settings = settings_for(tiny_config, redis_url="", url_allowed_networks="127.0.0.1/32")
    async with serve_app(settings) as client:
        fetched = await client.post(DINO, json=images(url + "/to-photo"))
        assert fetched.status_code == 200, fetched.text  # the allow-list works: refusals count
        for path, needle in REDIRECT_CASES:
            response = await client.post(DINO, json=images(url + path))
            assert_clean_refusal(response, 400, needle)
        assert (await client.get("/health")).status_code == 200
    assert private_target.RequestHandlerClass.hits == []  # nothing private was fetched
    assert {p for p, _ in REDIRECT_CASES} <= set(store.RequestHandlerClass.hits)
