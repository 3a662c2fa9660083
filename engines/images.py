"""Pixel helpers shared by the families' pre-processing (numpy + torch, no torchvision).

Also the PNG encoder of their outputs (masks, depth maps, visualizations).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import ExifTags, Image

from engines.base import SizeHint

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# A JPEG decoded at a reduced scale keeps at least this many times the size the model resizes
# it to, per side: the model's antialiased resize still averages over >= 2 decoded pixels.
SHRINK_MARGIN = 2
# Key in ``Image.info`` of an image decoded at a reduced scale: its (width, height) as sent.
SOURCE_SIZE = "vision_api.source_size"
# EXIF orientations that swap width and height.
_TRANSPOSING = (5, 6, 7, 8)


def shrink_on_load(image: Image.Image, hint: SizeHint) -> tuple[int, int] | None:
    """Set an opened, not yet loaded JPEG to decode at the smallest DCT scale the model allows.

    libjpeg-turbo decodes at 1/2, 1/4 or 1/8 scale in the DCT (each output pixel the mean of
    its 2², 4² or 8² block, before the colour conversion): a 12 MP camera photo for a 224²
    model decodes at 1008x756 and its resize reads 1/16 of the pixels, decoding and
    pre-processing 148 -> 49 ms on a 2-core CPU (``benchmarks/bench_large_photos.py``; the
    entropy decoding of every coefficient remains). The scale keeps at least
    :data:`SHRINK_MARGIN` times the size ``hint`` gives for the upright (EXIF-rotated) source,
    so the model's antialiased resize still averages over several decoded pixels: the pixels
    it sees move by 0.1-0.2 grey levels on average.

    Returns:
        The upright source ``(width, height)`` when a reduced scale was set, else None (not a
        JPEG, the pipeline needs every pixel, or the image is not large enough to gain).
    """
    if image.format not in ("JPEG", "MPO"):  # MPO: a camera's JPEG with extra frames
        return None
    transposed = image.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSING
    width, height = (image.height, image.width) if transposed else image.size
    size = hint(width, height)
    if size is None:
        return None
    need = (size[0] * SHRINK_MARGIN, size[1] * SHRINK_MARGIN)
    if width < 2 * need[0] or height < 2 * need[1]:  # not even the 1/2 scale would do
        return None
    if image.draft(None, need[::-1] if transposed else need) is None:  # Pillow declined
        return None
    return width, height


def source_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image as it was sent, also where it was decoded smaller."""
    size = image.info.get(SOURCE_SIZE)
    return (int(size[0]), int(size[1])) if size is not None else image.size


def released_preprocessing(
    size: dict[str, int], mean: Sequence[float], std: Sequence[float], **extra: Any
) -> dict[str, Any]:
    """A ``preprocessor_config.json`` dict: resize (bilinear) → rescale 1/255 → normalise.

    The families keep their released checkpoints' recipe this way, to fill in keys a local
    config file lacks (and to write tiny checkpoints in the same layout).
    """
    return {
        "do_resize": True,
        "size": dict(size),
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        **extra,
    }


def image_to_chw_float(image: Image.Image, rescale_factor: float | None = 1 / 255) -> np.ndarray:
    """An RGB PIL image as a contiguous (3, H, W) float32 array, multiplied by ``rescale_factor``.

    One pass: the uint8 (H, W, 3) pixels are converted, rescaled and laid out channel-first
    together (0.4 ms for 512², against 2-4 ms for a float copy rescaled through a strided view
    and made contiguous afterwards).
    """
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    out = np.empty((3, *rgb.shape[:2]), np.float32)
    channels_first = rgb.transpose(2, 0, 1)
    if rescale_factor is None:
        np.copyto(out, channels_first)
    else:
        np.multiply(channels_first, np.float32(rescale_factor), out=out, dtype=np.float32)
    return out


def resize_normalize(
    image: Image.Image,
    size: tuple[int, int],
    mode: str = "bilinear",
    rescale_factor: float | None = 1 / 255,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    uint8: bool = False,
) -> np.ndarray:
    """An RGB image rescaled, resized to ``size`` (height, width), normalised per channel.

    Returns a contiguous (3, H, W) float32 array. By default in the order of the processors that
    rescale first (DINOv3's): rescale → antialiased resize of the float pixels → normalise.
    The resize reads the rescaled pixels where they lie, channel-last (torch takes the permuted
    view as a channels-last tensor), so no channel-first float copy is made before it: the same
    values, bit for bit, as resizing a channel-first copy, 0.2 ms sooner for a 512² photo
    (torch was the fastest of PIL, numpy and torch on this path).

    ``uint8``: resize the 8-bit pixels themselves, then rescale and normalise in one pass
    (:func:`_resize_uint8`): the order of the processors that resize a uint8 image with
    torchvision (SAM3's), whose pixels it gives; against the float order each value moves
    by at most one grey level (0.25 on average) in a bilinear resize, for a resize 3-4x faster
    (a bicubic one overshoots, and 8 bits clip the overshoot).
    """
    if uint8:
        return _resize_uint8(image, size, mode, rescale_factor, mean, std)
    import torch
    import torch.nn.functional as F

    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if rescale_factor is None:
        hwc = rgb.astype(np.float32)
    else:
        hwc = np.multiply(rgb, np.float32(rescale_factor), dtype=np.float32)
    out = hwc.transpose(2, 0, 1)
    if out.shape[-2:] != tuple(size):
        with torch.inference_mode():
            tensor = torch.from_numpy(hwc).permute(2, 0, 1)[None]
            out = F.interpolate(tensor, size=size, mode=mode, antialias=True, align_corners=False)[
                0
            ].numpy()
    if mean is not None and std is not None:
        out = (out - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[
            :, None, None
        ]
    return np.ascontiguousarray(out, dtype=np.float32)


def _resize_uint8(
    image: Image.Image,
    size: tuple[int, int],
    mode: str,
    rescale_factor: float | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> np.ndarray:
    """:func:`resize_normalize` with the resize on the 8-bit pixels.

    torch's native uint8 antialiased kernels (vectorised; the ones torchvision's ``resize``
    calls for a uint8 image on CPU) read the pixels channel-last where they lie; rescaling and
    normalising are one multiply-add per value into the channel-first output. A 512² photo to
    224², one thread: 0.74 ms against 3.2 ms for the float order.
    """
    import torch
    import torch.nn.functional as F

    # A writable copy (as fast as the read-only view here): torch warns on a read-only array.
    rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    resized = rgb.transpose(2, 0, 1)
    if resized.shape[-2:] != tuple(size):
        with torch.inference_mode():
            tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
            resized = F.interpolate(
                tensor, size=size, mode=mode, antialias=True, align_corners=False
            )[0].numpy()
    scale = np.full(3, 1.0 if rescale_factor is None else rescale_factor, np.float32)
    shift = np.zeros(3, np.float32)
    if mean is not None and std is not None:
        means = np.array(mean, dtype=np.float32)
        stds = np.array(std, dtype=np.float32)
        scale /= stds
        shift = np.divide(-means, stds, dtype=np.float32)
    out = np.empty(resized.shape, np.float32)
    np.multiply(resized, scale[:, None, None], out=out, dtype=np.float32)
    out += shift[:, None, None]
    return out


def png_base64(pixels: np.ndarray, *, up_filter: bool = False) -> str:
    """Base64 (ASCII) of a PNG of ``pixels``, encoded by OpenCV.

    ``pixels``: (H, W) grey, 8 or 16 bits, or (H, W, 3) BGR. ``up_filter``: zlib level 1 with
    every row filtered Up (the difference to the row above) instead of libpng's choice per
    row: 1.35-2x faster than Pillow at the same level on depth maps resized up to the photo
    and on visualizations, within a few per cent of the bytes
    (``benchmarks/bench_preprocessing.py``); otherwise OpenCV's defaults.
    """
    import cv2

    params = (
        [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
        if up_filter
        else []
    )
    ok, encoded = cv2.imencode(".png", pixels, params)
    if not ok:  # OpenCV encodes any such array; a failure is a bug, not bad input
        raise RuntimeError(f"OpenCV could not encode a {pixels.shape} {pixels.dtype} PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")
