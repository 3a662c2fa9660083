"""Binary mask encodings for JSON responses: dense, COCO RLE, COCO polygons, PNG.

Every encoder takes a boolean (H, W) mask in input-image pixels. ``decode_mask`` turns each
encoding back into a mask (exactly, except ``polygon``, which is a simplified outline).
"""

from __future__ import annotations

import base64
from typing import Any, Literal, get_args

import numpy as np

from engines.errors import InvalidInputError
from engines.images import png_base64

MaskFormat = Literal["dense", "rle", "polygon", "png"]
FORMATS: tuple[MaskFormat, ...] = get_args(MaskFormat)
# approxPolyDP tolerance in pixels: drops the staircase points of a pixel outline while
# keeping the outline within a pixel of the mask's border.
POLYGON_EPSILON_PX = 1.0


def encode_mask(mask: np.ndarray, fmt: MaskFormat) -> Any:
    """Encode a boolean (H, W) mask in one of :data:`FORMATS`.

    Args:
        mask: The mask; any dtype, non-zero is foreground.
        fmt: ``dense`` (rows of 0/1), ``rle`` (COCO compressed RLE with ``counts`` as str),
            ``polygon`` (outer contours, ``[[x0, y0, x1, y1, ...], ...]``) or ``png``
            (base64 of a single-channel 8-bit PNG, 0/255).

    Returns:
        A JSON-ready value.

    Raises:
        InvalidInputError: ``fmt`` is not one of :data:`FORMATS`.

    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if fmt == "dense":
        return mask.astype(np.uint8).tolist()
    if fmt == "rle":
        return mask_to_rle(mask)
    if fmt == "polygon":
        return mask_to_polygons(mask)
    if fmt == "png":
        return mask_to_png(mask)
    raise InvalidInputError(f"Unknown output format {fmt!r}: use one of {', '.join(FORMATS)}.")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE, exactly as ``pycocotools.mask.encode`` gives it (counts as str)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray, epsilon_px: float = POLYGON_EPSILON_PX) -> list[list[int]]:
    """Outer contours, simplified, as flat COCO polygons ``[x0, y0, x1, y1, ...]``.

    Holes are not represented; contours that simplify to fewer than 3 points are dropped.
    """
    import cv2

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    for contour in contours:
        simplified = cv2.approxPolyDP(contour, epsilon_px, True)
        if len(simplified) >= 3:
            polygons.append(simplified.reshape(-1).astype(int).tolist())
    return polygons


def mask_to_png(mask: np.ndarray) -> str:
    """Base64 of a single-channel 8-bit PNG holding the mask as 0/255."""
    return png_base64(mask.astype(np.uint8) * 255)


def decode_mask(encoded: Any, fmt: str, height: int, width: int) -> np.ndarray:
    """Turn an encoding from :func:`encode_mask` back into a boolean (height, width) mask.

    ``polygon`` is filled with OpenCV, so it gives the simplified outline's area, not the
    exact mask.
    """
    import cv2

    if fmt == "dense":
        return np.asarray(encoded, dtype=np.uint8).reshape(height, width).astype(bool)
    if fmt == "rle":
        from pycocotools import mask as coco_mask

        rle = {"size": encoded["size"], "counts": encoded["counts"].encode("ascii")}
        return coco_mask.decode(rle).astype(bool)
    if fmt == "polygon":
        canvas = np.zeros((height, width), np.uint8)
        shapes = [np.asarray(p, np.int32).reshape(-1, 1, 2) for p in encoded]
        if shapes:
            cv2.fillPoly(canvas, shapes, 1)
        return canvas.astype(bool)
    if fmt == "png":
        data = np.frombuffer(base64.b64decode(encoded), np.uint8)
        return np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED)) > 0
    raise InvalidInputError(f"Unknown output format {fmt!r}: use one of {', '.join(FORMATS)}.")
