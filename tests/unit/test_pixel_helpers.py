"""The families' shared pixel helpers against the reference order on channel-first floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engines.images import IMAGENET_MEAN, IMAGENET_STD, image_to_chw_float, resize_normalize
from tests.conftest import ASSETS


def reference(
    image: Image.Image, size: tuple[int, int], mode: str, rescale: float | None
) -> np.ndarray:
    """Rescale a channel-first float copy, resize it (antialiased), normalise: the HF order."""
    pixels = np.asarray(image.convert("RGB")).transpose(2, 0, 1).astype(np.float32)
    if rescale is not None:
        pixels = pixels * np.float32(rescale)
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))[None]
    if tuple(tensor.shape[-2:]) != size:
        tensor = F.interpolate(tensor, size=size, mode=mode, antialias=True, align_corners=False)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return (tensor[0].numpy() - mean) / std


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (256, 320), (1008, 1008)])
@pytest.mark.parametrize("rescale", [1 / 255, None])
def test_resize_normalize_equals_the_reference_bit_for_bit(
    mode: str, size: tuple[int, int], rescale: float | None
) -> None:
    image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
    ours = resize_normalize(image, size, mode, rescale, IMAGENET_MEAN, IMAGENET_STD)
    assert ours.shape == (3, *size) and ours.dtype == np.float32
    assert ours.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ours, reference(image, size, mode, rescale))


def test_resize_normalize_without_a_resize_or_normalisation() -> None:
    image = Image.open(ASSETS / "coffee.png").convert("L")  # converted to RGB on the way
    size = (image.height, image.width)
    ours = resize_normalize(image, size)
    assert ours.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ours, image_to_chw_float(image.convert("RGB")))


def reference_uint8(
    image: Image.Image, size: tuple[int, int], mode: str, rescale: float | None
) -> np.ndarray:
    """torchvision's order for a uint8 image (SAM3's processor): resize the 8-bit pixels with
    torch's uint8 kernel, then rescale and normalise the float values."""
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    if tuple(tensor.shape[-2:]) != size:
        tensor = F.interpolate(tensor, size=size, mode=mode, antialias=True, align_corners=False)
    pixels = tensor[0].numpy().astype(np.float32)
    if rescale is not None:
        pixels = pixels * np.float32(rescale)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return (pixels - mean) / std


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (256, 320), (1008, 1008)])
@pytest.mark.parametrize("rescale", [1 / 255, None])
def test_resize_normalize_uint8_gives_torchvisions_uint8_order(
    mode: str, size: tuple[int, int], rescale: float | None
) -> None:
    image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
    ours = resize_normalize(image, size, mode, rescale, IMAGENET_MEAN, IMAGENET_STD, uint8=True)
    assert ours.shape == (3, *size) and ours.dtype == np.float32
    assert ours.flags["C_CONTIGUOUS"]
    expected = reference_uint8(image, size, mode, rescale)
    # One multiply-add per value instead of rescale, subtract, divide: float rounding only.
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 if rescale else 1e-3)


@pytest.mark.parametrize("name", ["chelsea.jpg", "astronaut.png", "rocket.jpg"])
def test_resize_normalize_uint8_stays_within_a_grey_level_of_the_float_order(name: str) -> None:
    image = Image.open(ASSETS / name).convert("RGB")
    float_order = resize_normalize(image, (224, 224), "bilinear", 1 / 255)
    uint8_order = resize_normalize(image, (224, 224), "bilinear", 1 / 255, uint8=True)
    levels = np.abs(uint8_order - float_order) * 255
    assert levels.max() <= 1.0 + 1e-3  # rounding to 8 bits, and the kernel's fixed point
    assert 0.1 < levels.mean() < 0.35  # ~uniform rounding: 0.25 on average


def test_resize_normalize_uint8_without_a_resize_or_normalisation() -> None:
    image = Image.open(ASSETS / "coffee.png").convert("L")  # converted to RGB on the way
    size = (image.height, image.width)
    ours = resize_normalize(image, size, uint8=True)
    assert ours.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ours, image_to_chw_float(image.convert("RGB")))
