import base64
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from engines.errors import InvalidInputError
from engines.masks import FORMATS, decode_mask, encode_mask

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# pycocotools' decode trips a numpy 2 DeprecationWarning inside its own code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _blobs() -> np.ndarray:
    mask = np.zeros((240, 320), np.uint8)
    cv2.circle(mask, (80, 90), 50, 1, -1)
    cv2.ellipse(mask, (230, 150), (70, 40), 30, 0, 360, 1, -1)
    cv2.rectangle(mask, (20, 180), (120, 230), 1, -1)
    return mask.astype(bool)


def _star() -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radii = np.where(np.arange(10) % 2 == 0, 110, 45)
    points = np.stack([200 + radii * np.cos(angles), 150 + radii * np.sin(angles)], 1)
    mask = np.zeros((300, 400), np.uint8)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    return mask.astype(bool)


def _photo(name: str, dark: bool) -> np.ndarray:
    gray = np.asarray(Image.open(ASSETS / name).convert("L"))
    blurred = cv2.GaussianBlur(gray, (9, 9), 0)
    level, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return blurred <= level if dark else blurred > level


MASKS = {
    "blobs": _blobs,
    "star": _star,
    "camera-dark": lambda: _photo("camera.png", True),
    "camera-light": lambda: _photo("camera.png", False),
    "coffee-dark": lambda: _photo("coffee.png", True),
}


@pytest.fixture(params=list(MASKS))
def mask(request: pytest.FixtureRequest) -> np.ndarray:
    return MASKS[request.param]()


def test_rle_is_pycocotools_encoding_and_decodes_exactly(mask: np.ndarray) -> None:
    rle = encode_mask(mask, "rle")
    expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle == {"size": list(expected["size"]), "counts": expected["counts"].decode()}
    assert isinstance(rle["counts"], str)
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_polygon_outlines_the_mask_compactly(mask: np.ndarray) -> None:
    polygons = encode_mask(mask, "polygon")
    assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    assert all(isinstance(v, int) for p in polygons for v in p)
    filled = decode_mask(polygons, "polygon", *mask.shape)
    assert _iou(filled, mask) >= 0.9
    # The same polygons rasterised by pycocotools, as a COCO consumer would.
    height, width = mask.shape
    rles = coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    coco_filled = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    assert _iou(coco_filled, mask) >= 0.9
    assert sum(len(p) for p in polygons) < mask.size / 50


def test_png_is_single_channel_0_255_and_decodes_exactly(mask: np.ndarray) -> None:
    png = encode_mask(mask, "png")
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    assert image.format == "PNG" and image.mode == "L"
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask)


def test_dense_is_rows_of_zero_and_one(mask: np.ndarray) -> None:
    dense = encode_mask(mask, "dense")
    assert len(dense) == mask.shape[0] and len(dense[0]) == mask.shape[1]
    assert {v for row in dense for v in row} <= {0, 1}
    np.testing.assert_array_equal(np.asarray(dense, bool), mask)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_mask_round_trips(mask: np.ndarray, fmt: str) -> None:
    decoded = decode_mask(encode_mask(mask, fmt), fmt, *mask.shape)
    assert decoded.shape == mask.shape and decoded.dtype == bool
    if fmt == "polygon":
        assert _iou(decoded, mask) >= 0.9
    else:
        np.testing.assert_array_equal(decoded, mask)


def test_degenerate_shapes_are_dropped_from_polygons() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10, 10] = True  # a single pixel
    mask[20, 5:40] = True  # a one-pixel line: its outline has no area
    mask[30:45, 30:45] = True
    polygons = encode_mask(mask, "polygon")
    assert len(polygons) == 1
    assert sorted(zip(polygons[0][::2], polygons[0][1::2], strict=True)) == [
        (30, 30),
        (30, 44),
        (44, 30),
        (44, 44),
    ]


def test_empty_and_full_masks() -> None:
    empty = np.zeros((8, 12), bool)
    full = np.ones((8, 12), bool)
    assert encode_mask(empty, "polygon") == []
    for fmt in ("dense", "rle", "png"):
        np.testing.assert_array_equal(decode_mask(encode_mask(empty, fmt), fmt, 8, 12), empty)
        np.testing.assert_array_equal(decode_mask(encode_mask(full, fmt), fmt, 8, 12), full)
    assert _iou(decode_mask(encode_mask(full, "polygon"), "polygon", 8, 12), full) == 1.0


def test_unknown_format_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="bitmap"):
        encode_mask(np.zeros((2, 2), bool), "bitmap")
