"""POST /inference/depth-anything on the real app (tiny checkpoints): formats, batches,
every kind of variant, bad input."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_clear_error, asset_b64

PATH = "/inference/depth-anything"


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=120) as client:
        yield client


def depth(http: httpx.Client, images: list[str], **options: object) -> dict:
    response = http.post(PATH, json={"images": images, **options})
    assert response.status_code == 200, response.text
    return response.json()


def size_of(name: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(asset_b64(name)))) as image:
        return image.size


def test_array_output_at_input_size(http: httpx.Client) -> None:
    body = depth(http, [asset_b64("chelsea.jpg")])
    assert body["model_type"] == "depth-anything" and body["variant"] == "tiny"
    assert body["engine"] == "torch"
    (result,) = body["results"]
    width, height = size_of("chelsea.jpg")
    assert (result["width"], result["height"]) == (width, height)
    assert result["kind"] == "relative" and result["units"] is None
    assert result["relation"] == "depth"
    values = np.asarray(result["depth"])
    assert values.shape == (height, width) and np.isfinite(values).all()
    assert (result["min"], result["max"]) == (values.min(), values.max())
    assert result["max"] > result["min"] > 0
    confidence = result["confidence"]
    assert 1.0 <= confidence["min"] <= confidence["mean"] <= confidence["max"]
    intrinsics = np.asarray(result["intrinsics"])
    assert intrinsics.shape == (3, 3) and intrinsics[2].tolist() == [0.0, 0.0, 1.0]
    assert intrinsics[0, 2] == pytest.approx(width / 2) and intrinsics[1, 2] == pytest.approx(
        height / 2
    )
    assert "focal_px" not in result and "sky_fraction" not in result


def test_png_output_is_16_bit_and_maps_back(http: httpx.Client) -> None:
    image = asset_b64("rocket.jpg")
    (array,) = depth(http, [image])["results"]
    (png,) = depth(http, [image], output_format="png")["results"]
    with Image.open(io.BytesIO(base64.b64decode(png["depth"]))) as decoded:
        assert decoded.format == "PNG" and decoded.mode.startswith("I;16")
        assert decoded.size == size_of("rocket.jpg")
        levels = np.asarray(decoded).astype(np.float64)
    low, high = png["min"], png["max"]
    assert (low, high) == (array["min"], array["max"])
    assert levels.min() == 0 and levels.max() == 65535
    restored = low + levels / 65535 * (high - low)
    assert np.abs(restored - np.asarray(array["depth"])).max() <= (high - low) / 65535


def test_batch_of_sizes_in_order_equals_single_requests(http: httpx.Client) -> None:
    # chelsea and coffee share a network size (504 x 336): one forward of two
    names = ["chelsea.jpg", "rocket.jpg", "coffee.png", "camera.png"]
    batched = depth(http, [asset_b64(n) for n in names])["results"]
    assert len(batched) == len(names)
    for name, result in zip(names, batched, strict=True):
        assert (result["width"], result["height"]) == size_of(name)
        (single,) = depth(http, [asset_b64(name)])["results"]
        scale = max(abs(single["min"]), abs(single["max"]))
        np.testing.assert_allclose(result["depth"], single["depth"], rtol=1e-4, atol=1e-5 * scale)
    assert batched[0]["min"] != batched[2]["min"]  # not one image's map twice


def test_mono_variant(http: httpx.Client) -> None:
    body = depth(http, [asset_b64("astronaut.png")], variant="tiny-mono")
    (result,) = body["results"]
    assert body["variant"] == "tiny-mono"
    assert result["kind"] == "relative" and result["units"] is None
    assert 0.0 <= result["sky_fraction"] <= 1.0
    assert "intrinsics" not in result and "confidence" not in result


def test_metric_variant_default_fov_and_focal(http: httpx.Client) -> None:
    image = asset_b64("coffee.png")
    width, _ = size_of("coffee.png")
    (default,) = depth(http, [image], variant="tiny-metric")["results"]
    assert default["kind"] == "metric" and default["units"] == "m"
    assert default["focal_source"] == "default_fov"
    assert default["focal_px"] == pytest.approx(width / 2 / np.tan(np.radians(30)))
    (given,) = depth(http, [image], variant="tiny-metric", focal_px=800.0)["results"]
    assert given["focal_source"] == "request" and given["focal_px"] == 800.0
    # metres are proportional to the focal length
    ratio = 800.0 / default["focal_px"]
    np.testing.assert_allclose(given["depth"], ratio * np.asarray(default["depth"]), rtol=1e-5)
    assert given["min"] == pytest.approx(ratio * default["min"], rel=1e-5)


def test_v2_variant_is_inverse_depth(http: httpx.Client) -> None:
    (result,) = depth(http, [asset_b64("camera.png")], variant="tiny-v2")["results"]
    assert result["kind"] == "relative" and result["relation"] == "inverse"
    assert np.asarray(result["depth"]).shape == size_of("camera.png")[::-1]
    assert "confidence" not in result and "intrinsics" not in result


def test_alias_status_and_openapi(http: httpx.Client) -> None:
    loaded = http.post("/models/load", json={"model_type": "depth_anything", "variant": "tiny-v2"})
    assert loaded.status_code == 200 and loaded.json()["model_type"] == "depth-anything"
    models = http.get("/models/status").json()["models"]
    status = {(m["model_type"], m["variant"]): m for m in models}
    assert status[("depth-anything", "small")]["license"] == "Apache-2.0"
    assert "non-commercial" in status[("depth-anything", "giant")]["license"]
    assert "non-commercial" in status[("depth-anything", "v2-large")]["license"]
    schema = http.get(http.get("/").json()["openapi"]).json()
    assert PATH in schema["paths"]
    assert "DepthAnythingResult" in str(schema["components"]["schemas"])


BAD_INPUTS = [
    ("unknown output_format", {"output_format": "tiff"}, 400, "output_format"),
    ("zero focal", {"focal_px": 0}, 400, "focal_px"),
    ("negative focal", {"focal_px": -500.0}, 400, "focal_px"),
    ("focal as text", {"focal_px": "wide"}, 400, "focal_px"),
    ("misspelt field", {"output_fromat": "png"}, 400, "output_fromat"),
    ("unknown variant", {"variant": "v3-huge"}, 404, "v3-huge"),
]


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_clear_4xx(
    http: httpx.Client, extra: dict, status: int, needle: str
) -> None:
    response = http.post(PATH, json={"images": [asset_b64("chelsea.jpg")], **extra})
    assert_clear_error(response, status, needle)


@pytest.mark.parametrize("variant", ["tiny", "tiny-v2"])
def test_a_large_jpeg_keeps_its_size_when_decoded_small(http: httpx.Client, variant: str) -> None:
    """2800x2100 decodes at 1/2 scale for DA3 (504x378) and V2 (~700x518); depth comes at
    2800x2100."""
    photo = Image.open(io.BytesIO(base64.b64decode(asset_b64("rocket.jpg")))).convert("RGB")
    buffer = io.BytesIO()
    photo.resize((2800, 2100), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=92)
    jpeg = base64.b64encode(buffer.getvalue()).decode()
    depth(http, [asset_b64("chelsea.jpg")], variant=variant)  # loaded: decoded where prepared
    maps = []
    for options in ({}, {"visualize": True}):  # a visualisation decodes every pixel
        (result,) = depth(http, [jpeg], output_format="png", variant=variant, **options)["results"]
        assert (result["width"], result["height"]) == (2800, 2100)
        with Image.open(io.BytesIO(base64.b64decode(result["depth"]))) as decoded:
            assert decoded.size == (2800, 2100)
            levels = np.asarray(decoded).astype(np.float64) / 65535
        maps.append(result["min"] + levels * (result["max"] - result["min"]))
    shrunk, every_pixel = maps
    assert not np.array_equal(shrunk, every_pixel)  # the network saw other pixels ...
    assert np.corrcoef(shrunk.ravel(), every_pixel.ravel())[0, 1] >= 0.99
    assert np.abs(shrunk - every_pixel).mean() <= 0.02 * (every_pixel.max() - every_pixel.min())
    print(
        variant,
        np.corrcoef(shrunk.ravel(), every_pixel.ravel())[0, 1],
        np.abs(shrunk - every_pixel).mean() / (every_pixel.max() - every_pixel.min()),
    )
