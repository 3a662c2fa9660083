"""Depth maps as the API returns them: resized to the input image, encoded as 16-bit PNG.

Also intrinsics taken from network pixels to the input image's.
"""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
from PIL import Image

from engines.images import png_base64

PNG_LEVELS = 65535
_CV2_MODES = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# float64 values per block in png_levels: 512 KiB, within a core's L2 cache
_LEVEL_BLOCK_VALUES = 1 << 16


def resize_depth(depth: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """Resize an (h, w) map to (height, width), ``bilinear`` or ``bicubic``.

    transformers' ``post_process_depth_estimation`` calls ``F.interpolate`` (align_corners
    False, no antialiasing); ``cv2.resize`` has the same half-pixel centres and A = -0.75 cubic
    and is 10-15x faster (a 12 MP map 163 -> 11 ms, a 512² one 2.2 -> 0.2 ms on the 2-core
    CPU). Both place the source pixels in float32, rounded differently: a network's smooth map
    moves by less than one 16-bit PNG level (1.5e-5 of its range), a noise map by up to ~1e-4.
    """
    if depth.shape == (height, width):
        return depth
    interpolation = _CV2_MODES[mode]
    source = np.ascontiguousarray(depth, np.float32)
    return np.asarray(cv2.resize(source, (width, height), interpolation=interpolation))


def depth_to_png(depth: np.ndarray, low: float, high: float) -> str:
    """Base64 of a 16-bit grayscale PNG of :func:`png_levels`.

    Decode with ``low + value / 65535 * (high - low)``. OpenCV's encoder at zlib level 1 with
    every row filtered ``Up`` (the difference to the row above; a map resized up to the photo
    is smooth down its columns) instead of Pillow's at the same level, which lets libpng choose
    a filter per row: a 12 MP map 1.5-2x faster (a synthetic scene 723 -> 352 ms, a noisier
    map 1168 -> 654 ms), a 640x427 one 1.2-1.5x, 2-4 % fewer bytes, the same levels
    (``benchmarks/bench_preprocessing.py``, 2-core CPU). Level 1 rather than the default 6:
    4x faster for 2.5 % more bytes.
    """
    return png_base64(png_levels(depth, low, high), up_filter=True)


def png_levels(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    """``round((d - low) / (high - low) * 65535)`` clipped to 0..65535 as uint16, in float64.

    In blocks of rows through one small float64 buffer rather than as whole-map temporaries:
    a 12 MP map in 20 instead of 62 ms, the same values (the same operations in the same
    order). A constant map (``high == low``) is all zeros.
    """
    levels = np.zeros(depth.shape, np.uint16)
    span = high - low
    if not span > 0:
        return levels
    rows = max(1, _LEVEL_BLOCK_VALUES // max(1, depth.shape[-1]))
    scratch = np.empty((min(rows, depth.shape[0]), *depth.shape[1:]), np.float64)
    for start in range(0, depth.shape[0], rows):
        stop = min(start + rows, depth.shape[0])
        block = scratch[: stop - start]
        np.subtract(depth[start:stop], low, out=block, dtype=np.float64)
        block /= span
        block *= PNG_LEVELS
        np.rint(block, out=block)
        np.clip(block, 0, PNG_LEVELS, out=block)
        levels[start:stop] = block
    return levels


def png_to_depth(encoded: str, low: float, high: float) -> np.ndarray:
    """Inverse of :func:`depth_to_png` (to within half a level of the range)."""
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        levels = np.asarray(image).astype(np.float64)
    return low + levels / PNG_LEVELS * (high - low)


def scale_intrinsics(
    intrinsics: np.ndarray, image_size: tuple[int, int], network_size: tuple[int, int]
) -> np.ndarray:
    """3×3 intrinsics from network-input to input-image pixels: fx, cx by W/w; fy, cy by H/h."""
    (width, height), (net_w, net_h) = image_size, network_size
    scaled = intrinsics.copy()
    scaled[0, :] *= width / net_w
    scaled[1, :] *= height / net_h
    return scaled
