"""DA3 pre-processing against the reference recipe (OpenCV resizes, ImageNet normalisation)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engines.families.depth_anything.da3.preprocess import (
    da3_input_size,
    preprocess_da3,
    reference_resize,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def reference_preprocess(image: np.ndarray, process_res: int = 504) -> np.ndarray:
    """depth_anything_3.utils.io.input_processor.InputProcessor, ``upper_bound_resize``.

    Transcribed (``_resize_longest_side``, ``_make_divisible_by_resize``, ToTensor, Normalize)
    because importing the module needs torchvision, which this project does not install.
    """
    h, w = image.shape[:2]
    longest = max(w, h)
    if longest != process_res:
        scale = process_res / float(longest)
        new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        interpolation = cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_AREA
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    h, w = image.shape[:2]

    def nearest_multiple(x: int, p: int = 14) -> int:
        down = (x // p) * p
        up = down + p
        return up if abs(up - x) <= abs(x - down) else down

    new_w, new_h = max(1, nearest_multiple(w)), max(1, nearest_multiple(h))
    if (new_w, new_h) != (w, h):
        upscale = new_w > w or new_h > h
        interpolation = cv2.INTER_CUBIC if upscale else cv2.INTER_AREA
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    pixels = image.astype(np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def _checkerboard(height: int, width: int, cell: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    board = (((ys // cell) + (xs // cell)) % 2 * 255).astype(np.uint8)
    return np.stack([board, 255 - board, board // 2], axis=-1)


def _synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    return {
        "noise-upscale-75x100": noise(75, 100),
        "noise-downscale-1080x1920": noise(1080, 1920),
        "noise-odd-333x777": noise(333, 777),
        "noise-exact-2x-1008x700": noise(1008, 700),
        "noise-already-504-504x300": noise(504, 300),
        "noise-thin-300x20": noise(300, 20),
        "checker-upscale-90x120": _checkerboard(90, 120, 3),
        "checker-downscale-900x1300": _checkerboard(900, 1300, 7),
    }


def _assets() -> dict[str, np.ndarray]:
    return {
        path.name: np.asarray(Image.open(path).convert("RGB"))
        for path in sorted(ASSETS.glob("*"))
        if path.suffix in (".png", ".jpg")
    }


CASES = {**_assets(), **_synthetic()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_recipe(name: str) -> None:
    image = CASES[name]
    expected = reference_preprocess(image)
    ours = preprocess_da3(image)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    np.testing.assert_array_equal(ours.numpy(), expected)  # the same OpenCV calls and arithmetic
    assert (ours.shape[2], ours.shape[1]) == da3_input_size(image.shape[1], image.shape[0])


@pytest.mark.parametrize(
    ("size", "new_size"),
    [
        ((100, 75), (173, 230)),
        ((427, 640), (504, 336)),
        ((50, 50), (56, 49)),
        ((640, 999), (241, 377)),
        ((1000, 1000), (500, 500)),
        ((100, 50), (50, 50)),
    ],
)
def test_resampler_picks_the_references_interpolation(
    size: tuple[int, int], new_size: tuple[int, int]
) -> None:
    image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    width, height = new_size
    upscale = width > size[1] or height > size[0]
    expected = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA
    )
    ours = reference_resize(image, width, height)
    np.testing.assert_array_equal(ours, expected)


def test_other_process_res() -> None:
    image = CASES["chelsea.png"]
    ours = preprocess_da3(image, process_res=280)
    expected = reference_preprocess(image, process_res=280)
    assert ours.shape == expected.shape == (3, 182, 280)
    np.testing.assert_array_equal(ours.numpy(), expected)


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))]
)
def test_rejects_non_rgb_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess_da3(bad)
