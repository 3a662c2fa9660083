"""Pictures of results, for people: masks, boxes, depth and feature maps drawn over the input.

Every family's post-processing calls these when a request sets ``visualize`` (CPU threads, off
the event loop); nothing here runs otherwise. Pillow and numpy draw (the colour map is a small
table of turbo's anchor colours interpolated to 256 entries, text is Pillow's default font),
OpenCV encodes.
Each function returns an RGB :class:`PIL.Image.Image` at the input's size (or two of them side
by side); :func:`encode_png` turns it into the base64 string a response carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engines.images import png_base64

# Distinct, saturated colours (Tableau 10 and a few more), one per instance or prompt.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (255, 215, 0),
    (0, 128, 128),
    (128, 0, 0),
)
# Turbo (Google's perceptual rainbow) at 0, 0.1, ..., 1: dark blue (low) to dark red (high).
TURBO_ANCHORS = np.asarray(
    [
        (48, 18, 59),
        (73, 88, 221),
        (47, 158, 245),
        (39, 215, 195),
        (78, 249, 131),
        (150, 250, 80),
        (223, 220, 50),
        (255, 163, 35),
        (244, 92, 23),
        (184, 32, 8),
        (122, 4, 3),
    ],
    np.float32,
)
MASK_ALPHA = 0.5


def _lookup_table(anchors: np.ndarray, entries: int = 256) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, entries)
    channels = [np.interp(x, positions, anchors[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


TURBO = _lookup_table(TURBO_ANCHORS)


def requested(options: object) -> bool:
    """Whether ``options`` ask for a visualization.

    Options types without the field (export parity, benchmarks, tests' own) never do.
    """
    return bool(getattr(options, "visualize", False))


def colour(index: int) -> tuple[int, int, int]:
    """The palette's colour for instance or prompt ``index`` (cycling)."""
    return PALETTE[index % len(PALETTE)]


def encode_png(image: Image.Image) -> str:
    """Base64 (ASCII) of ``image`` as an RGB PNG.

    zlib level 1 (a 902x300 visualization 13 instead of 54 ms at Pillow's default level 6, for
    10 % more bytes), every row filtered Up, by OpenCV: the test photos' depth panels 1.35-1.6x
    faster than Pillow at the same level, which lets libpng choose a filter per row, for up to
    4 % more bytes, the same pixels (``benchmarks/bench_preprocessing.py``, 2-core CPU).
    """
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    return png_base64(bgr, up_filter=True)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map a (H, W) array to (H, W, 3) uint8 turbo colours, its min to blue, its max to red.

    A constant (or non-finite) map comes out as the middle colour.
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    low = float(values[finite].min()) if finite.any() else 0.0
    high = float(values[finite].max()) if finite.any() else 0.0
    if high > low:
        unit = (np.where(finite, values, low) - low) / (high - low)
    else:
        unit = np.full(values.shape, 0.5)
    return TURBO[np.round(unit * (len(TURBO) - 1)).astype(np.int64)]


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """``left`` and ``right`` (resized to ``left``'s size) next to each other."""
    right = right.convert("RGB").resize(left.size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (left.width * 2, left.height))
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def _font(image: Image.Image) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Legible on a phone photo and on a 64-pixel thumbnail alike.
    return ImageFont.load_default(size=max(10, min(image.size) // 30))


def draw_label(
    image: Image.Image, xy: tuple[float, float], text: str, fill: tuple[int, int, int]
) -> None:
    """Write ``text`` in white on a ``fill`` box whose top-left is ``xy`` (kept inside)."""
    draw = ImageDraw.Draw(image)
    font = _font(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 4
    x = min(max(0.0, xy[0]), max(0.0, image.width - width))
    y = min(max(0.0, xy[1]), max(0.0, image.height - height))
    draw.rectangle((x, y, x + width, y + height), fill=fill)
    draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)


class MaskOverlay:
    """Masks blended over an image one at a time, each in its own colour, then labelled.

    Args:
        image: The input image.
    """

    def __init__(self, image: Image.Image) -> None:
        self.image = image.convert("RGB")
        self.pixels = np.asarray(self.image, np.float32).copy()
        self.labels: list[tuple[tuple[float, float], str, tuple[int, int, int]]] = []

    def add(self, mask: np.ndarray, box: Sequence[float], label: str) -> None:
        """Blend one (H, W) boolean mask; its label goes at its box's top-left corner."""
        fill = colour(len(self.labels))
        self.pixels[mask] = (1 - MASK_ALPHA) * self.pixels[mask] + MASK_ALPHA * np.asarray(
            fill, np.float32
        )
        self.labels.append(((box[0], box[1]), label, fill))

    def render(self) -> Image.Image:
        """The blended image with every label written over it."""
        image = Image.fromarray(np.round(self.pixels).astype(np.uint8), "RGB")
        for xy, text, fill in self.labels:
            draw_label(image, xy, text, fill)
        return image


def draw_boxes(
    image: Image.Image, boxes: Sequence[tuple[Sequence[float], str, int]]
) -> Image.Image:
    """A copy of ``image`` with each ``(xyxy box, label, colour index)`` outlined and labelled."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, min(canvas.size) // 200)
    for box, _, index in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle(
            (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour(index), width=line
        )
    for box, label, index in boxes:
        draw_label(canvas, (float(box[0]), float(box[1])), label, colour(index))
    return canvas


def depth_panel(image: Image.Image, depth: np.ndarray, *, near_is_high: bool) -> Image.Image:
    """The image and its (H, W) depth map in turbo, side by side; near is red, far is blue.

    Args:
        image: The input image.
        depth: The map at the image's size.
        near_is_high: Larger values are nearer (inverse depth); else larger is farther.
    """
    values = np.asarray(depth, np.float64)
    coloured = colormap(values if near_is_high else -values)
    return side_by_side(image, Image.fromarray(coloured, "RGB"))


def pca_rgb(features: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The first three principal components of (N, D) patch features as a (rows, cols, 3) image.

    Each component is scaled to 0..255 over its 1st to 99th percentile; the sign of each is
    fixed (its largest loading positive) so equal features give equal colours. Fewer than three
    components leave the missing channels black.
    """
    x = np.asarray(features, np.float64).reshape(grid[0] * grid[1], -1)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:3]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    projected = x @ (components * np.where(signs == 0, 1.0, signs)[:, None]).T
    rgb = np.zeros((len(x), 3))
    for c in range(projected.shape[1]):
        low, high = np.percentile(projected[:, c], [1, 99])
        if high > low:
            rgb[:, c] = np.clip((projected[:, c] - low) / (high - low), 0, 1)
    return np.round(rgb * 255).astype(np.uint8).reshape(grid[0], grid[1], 3)


def features_panel(image: Image.Image, features: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """The image and the PCA colours of its patch features (upsampled), side by side."""
    patches = Image.fromarray(pca_rgb(features, grid), "RGB")
    return side_by_side(image, patches.resize(image.size, Image.Resampling.BILINEAR))
