"""DA3 pre-processing: the reference's ``upper_bound_resize`` recipe, without OpenCV.

The reference resizes twice with ``cv2.resize``: the longest side to ``process_res``, then each
side to the nearest multiple of 14, each time bicubic (a = -0.75) when enlarging and pixel-area
averaging when shrinking, with a uint8 image in between. Pillow's and torch's kernels differ
from OpenCV's (Pillow's bicubic uses a = -0.5 and its box filter samples pixel centres instead
of integrating areas), by up to tens of grey levels at sharp edges, so we reproduce OpenCV's
two resamplers here as separable weight tables: its bicubic weights and its exact area-overlap
weights, summed in float and rounded half to even. That equals OpenCV 5 except for rare ties;
OpenCV 4's bicubic rounds its weights to 11 bits and differs from both by one grey level in a
few per cent of pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PATCH_SIZE = 14
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _cubic_weights(x: np.ndarray) -> np.ndarray:
    """OpenCV's ``interpolateCubic`` (A = -0.75) for fractional offsets ``x``, in float32."""
    a = np.float32(-0.75)
    one = np.float32(1)
    w0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + one
    w2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    return np.stack([w0, w1, w2, one - w0 - w1 - w2], axis=-1)


def _cubic_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [out, 4] (edge-clamped) and weights [out, 4], as OpenCV computes them."""
    scale = 1.0 / (size_out / size_in)
    centres = ((np.arange(size_out) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(centres)
    weights = _cubic_weights((centres - first).astype(np.float32)).astype(np.float64)
    index = first.astype(np.int64)[:, None] + np.arange(-1, 3)[None]
    return np.clip(index, 0, size_in - 1), weights


def _area_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``computeResizeAreaTab`` for shrinking: overlap weights, padded with zeros."""
    scale = 1.0 / (size_out / size_in)
    rows: list[list[tuple[int, float]]] = []
    for out in range(size_out):
        start, end = out * scale, out * scale + scale
        cell = min(scale, size_in - start)
        first, last = math.ceil(start), min(math.floor(end), size_in - 1)
        first = min(first, last)
        taps = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / cell))
        taps.extend((i, 1.0 / cell) for i in range(first, last))
        if end - last > 1e-3:
            taps.append((last, min(end - last, 1.0, cell) / cell))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    index = np.zeros((size_out, width), dtype=np.int64)
    weight = np.zeros((size_out, width), dtype=np.float64)
    for out, taps in enumerate(rows):
        for k, (i, w) in enumerate(taps):
            index[out, k], weight[out, k] = i, np.float32(w)
    return index, weight


def _apply_taps(array: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sum of ``array``'s entries along ``axis``: out[o] = Σ_k w[o,k]·a[index[o,k]]."""
    shape = [1] * array.ndim
    shape[axis] = index.shape[0]
    out = None
    for k in range(index.shape[1]):
        term = np.take(array, index[:, k], axis=axis) * weight[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


def resize_like_opencv(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize`` of an (H, W, C) uint8 image as the reference calls it.

    Bicubic if either side grows, pixel-area averaging otherwise (both sides shrink or stay).
    """
    in_h, in_w = image.shape[:2]
    if (in_w, in_h) == (width, height):
        return image
    taps = _cubic_taps if width > in_w or height > in_h else _area_taps
    x_index, x_weight = taps(in_w, width)
    y_index, y_weight = taps(in_h, height)
    rows = _apply_taps(image.astype(np.float64), x_index, x_weight, axis=1)
    total = _apply_taps(rows, y_index, y_weight, axis=0)
    if (in_w, in_h) == (2 * width, 2 * height):
        total = np.floor(total + 0.5)  # OpenCV's 2x2 averaging rounds halves up
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def _nearest_multiple(size: int, multiple: int) -> int:
    """Nearest multiple (ties round up), at least one ``multiple``."""
    down = size // multiple * multiple
    up = down + multiple
    return max(multiple, up if up - size <= size - down else down)


def _bounded_size(width: int, height: int, process_res: int) -> tuple[int, int]:
    """Size after the first step: longest side to ``process_res``, aspect kept."""
    longest = max(width, height)
    if longest == process_res:
        return width, height
    scale = process_res / float(longest)
    return max(1, round(width * scale)), max(1, round(height * scale))


def da3_input_size(width: int, height: int, process_res: int = 504) -> tuple[int, int]:
    """Network input ``(width, height)`` that :func:`preprocess_da3` gives an image."""
    width, height = _bounded_size(width, height, process_res)
    return _nearest_multiple(width, PATCH_SIZE), _nearest_multiple(height, PATCH_SIZE)


def preprocess_da3(
    image: np.ndarray, process_res: int = 504, source_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize and normalise one RGB image for DA3, as the reference's input processor does.

    Two resizes, as in the reference (``upper_bound_resize``): the longest side to
    ``process_res``, then each side to the nearest multiple of 14 (ties up; at least 14,
    where the reference would give a side of 1 px for an extreme aspect ratio).

    Args:
        image: (H, W, 3) uint8 RGB.
        process_res: Target length of the longest side before rounding to multiples of 14.
        source_size: ``(width, height)`` the image was sent at, where it was decoded smaller
            (``engines.images.source_size``): the sizes follow the image as sent.

    Returns:
        [3, h, w] float32 tensor, ImageNet-normalised, h and w multiples of 14 (the network's
        output depth has this size too).

    Raises:
        ValueError: ``image`` is not an (H, W, 3) uint8 array.

    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    source_width, source_height = source_size or (image.shape[1], image.shape[0])
    image = resize_like_opencv(image, *_bounded_size(source_width, source_height, process_res))
    height, width = image.shape[:2]
    image = resize_like_opencv(
        image, _nearest_multiple(width, PATCH_SIZE), _nearest_multiple(height, PATCH_SIZE)
    )
    pixels = (image.astype(np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
