"""Turning what a caller has (a path, bytes, a PIL image, an array, a URL) into a request item."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageLike = Union[str, Path, bytes, "PILImage.Image", np.ndarray, dict[str, str]]
"""An image: an ``http(s)`` URL or ``data:`` URI, a file path, encoded bytes, a PIL image, an
``(H, W)`` / ``(H, W, 3|4)`` uint8 array, or an item object (``{"image_id": ...}`` for sam3,
``{"url": ...}``, ``{"data": ...}``)."""


def _png_b64(array: np.ndarray) -> str:
    from PIL import Image

    if array.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_image(image: ImageLike) -> str | dict[str, str]:
    """The request item for ``image`` (URLs pass through; pixels are sent as base64).

    Args:
        image: See :data:`ImageLike`. A ``str`` is a URL when it starts with ``http://``,
            ``https://`` or ``data:``, otherwise a file path.

    Returns:
        A string (URL or base64) or an item object, as the API's ``images`` list takes them.

    Raises:
        FileNotFoundError: A path that does not exist.
        TypeError: Something that is not an image.
    """
    if isinstance(image, dict):
        return dict(image)
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, (str, Path)):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(image)).decode("ascii")
    if isinstance(image, np.ndarray):
        return _png_b64(image)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"not an image: {type(image).__name__}")


def encode_images(images: ImageLike | list[Any]) -> list[str | dict[str, str]]:
    """:func:`encode_image` over a list (a single image is a list of one)."""
    items = images if isinstance(images, (list, tuple)) else [images]
    return [encode_image(image) for image in items]
