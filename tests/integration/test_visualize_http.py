"""``visualize: true`` on every family's endpoint, over HTTP against the real app (tiny models).

Each visualization must be a valid PNG at the input's size (or the input beside a map), not
blank, and show the input, not only the overlay; without ``visualize`` there is none.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASSETS, assert_clear_error, asset_b64

PHOTO = "astronaut.png"


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(ASSETS / PHOTO) as image:
        return np.asarray(image.convert("RGB"), np.float64)


def run(http: httpx.Client, path: str, **options: object) -> dict:
    response = http.post(path, json={"images": [asset_b64(PHOTO)], **options})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result


def png_pixels(encoded: str) -> np.ndarray:
    data = base64.b64decode(encoded, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image, np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_sam3_masks_over_the_photo(http: httpx.Client, photo: np.ndarray) -> None:
    options = {"prompts": ["cat"], "threshold": 0.0, "output_format": "png"}
    result = run(http, "/inference/sam3", visualize=True, **options)
    out = png_pixels(result["visualization"])
    assert out.shape == photo.shape and out.std() > 10
    assert result["instances"]
    masks = [png_pixels_gray(i["mask"]) for i in result["instances"]]
    covered = np.any(masks, axis=0)
    changed = (out != photo).any(axis=2)
    assert changed[covered].mean() > 0.9  # the overlay is there
    if (~covered).any():  # and the photo around it, untouched but for the labels
        assert (~changed[~covered]).mean() > 0.9
    assert correlation(out, photo) > 0.3
    assert run(http, "/inference/sam3", **options).get("visualization") is None


def png_pixels_gray(encoded: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image) > 0


def test_sam3_visualize_needs_pixels_not_an_image_id(http: httpx.Client) -> None:
    response = http.post(
        "/inference/sam3",
        json={"images": [{"image_id": "0" * 32}], "prompts": ["cat"], "visualize": True},
    )
    assert_clear_error(response, 400, "visualize")


def test_grounding_dino_boxes_over_the_photo(http: httpx.Client, photo: np.ndarray) -> None:
    options = {"prompts": ["a person", "flag"], "box_threshold": 0.0, "text_threshold": 0.0}
    result = run(http, "/inference/grounding-dino", visualize=True, **options)
    out = png_pixels(result["visualization"])
    assert out.shape == photo.shape and out.std() > 10
    assert result["detections"]
    assert (out != photo).any(axis=2).mean() > 0.001  # boxes and labels drawn
    assert correlation(out, photo) > 0.5
    assert run(http, "/inference/grounding-dino", **options).get("visualization") is None


def test_depth_map_beside_the_photo(http: httpx.Client, photo: np.ndarray) -> None:
    result = run(http, "/inference/depth-anything", visualize=True)
    out = png_pixels(result["visualization"])
    height, width, _ = photo.shape
    assert out.shape == (height, 2 * width, 3)
    assert (out[:, :width] == photo).all()
    heat = out[:, width:]
    assert heat.std() > 10
    # The farthest pixel of the map is drawn blue-ish, the nearest red-ish.
    depth = np.asarray(result["depth"])
    far, near = (
        np.unravel_index(depth.argmax(), depth.shape),
        np.unravel_index(depth.argmin(), depth.shape),
    )
    assert heat[far][2] > heat[far][0] and heat[near][0] > heat[near][2]
    assert "visualization" not in run(http, "/inference/depth-anything")


def test_dinov3_components_beside_the_photo(http: httpx.Client, photo: np.ndarray) -> None:
    result = run(http, "/inference/dinov3", visualize=True)
    assert result["patch_features"] is None  # computed for the picture, not returned
    out = png_pixels(result["visualization"])
    height, width, _ = photo.shape
    assert out.shape == (height, 2 * width, 3)
    assert (out[:, :width] == photo).all()
    assert out[:, width:].std() > 10
    assert run(http, "/inference/dinov3").get("visualization") is None
