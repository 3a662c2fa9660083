"""engines/visualize.py on real photos: valid PNGs of the right size, not blank, showing it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engines import visualize
from tests.conftest import ASSETS


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(ASSETS / "chelsea.png") as image:
        return image.convert("RGB")


def decode(encoded: str) -> Image.Image:
    data = base64.b64decode(encoded, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_turbo_table_runs_blue_to_red() -> None:
    table = visualize.TURBO
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert tuple(table[0]) == (48, 18, 59) and tuple(table[-1]) == (122, 4, 3)
    ramp = visualize.colormap(np.linspace(-3.0, 7.0, 256)[None])
    assert (ramp[0] == table).all()
    assert (visualize.colormap(np.full((2, 3), 4.0)) == table[128]).all()  # constant: the middle


def test_mask_overlay_blends_inside_and_keeps_the_rest(photo: Image.Image) -> None:
    mask = np.zeros((photo.height, photo.width), bool)
    mask[photo.height // 2 :, : photo.width // 2] = True
    overlay = visualize.MaskOverlay(photo)
    overlay.add(
        mask, [photo.width * 0.6, photo.height * 0.6, photo.width, photo.height], "cat 0.91"
    )
    image = decode(visualize.encode_png(overlay.render()))
    assert image.size == photo.size and image.mode == "RGB"
    out, source = pixels(image), pixels(photo)
    expected = np.round(0.5 * source[mask] + 0.5 * np.asarray(visualize.PALETTE[0]))
    assert np.abs(out[mask] - expected).max() <= 1
    # Outside the mask the photo is untouched, except where the label is written.
    untouched = (out[~mask] == source[~mask]).all(axis=1)
    assert 0.95 < untouched.mean() < 1.0
    assert out.std() > 20


def test_boxes_are_drawn_over_the_photo(photo: Image.Image) -> None:
    boxes = [([20, 30, 200, 180], "cat 0.80", 0), ([150, 100, 400, 290], "dog 0.41", 1)]
    image = decode(visualize.encode_png(visualize.draw_boxes(photo, boxes)))
    assert image.size == photo.size
    out, source = pixels(image), pixels(photo)
    assert tuple(out[100, 20]) == visualize.PALETTE[0]  # on the first box's left edge
    assert tuple(out[200, 400 - 1]) == visualize.PALETTE[1]  # on the second's right edge
    assert (out == source).all(axis=2).mean() > 0.9
    assert correlation(out, source) > 0.9


def test_depth_panel_is_the_photo_beside_its_map(photo: Image.Image) -> None:
    # Increasing depth to the right: far (blue) on the right when larger values are farther.
    depth = np.tile(np.linspace(1.0, 10.0, photo.width, dtype=np.float32), (photo.height, 1))
    image = decode(visualize.encode_png(visualize.depth_panel(photo, depth, near_is_high=False)))
    assert image.size == (photo.width * 2, photo.height)
    out = pixels(image)
    assert (out[:, : photo.width] == pixels(photo)).all()
    heat = out[:, photo.width :]
    assert heat.std() > 20
    assert tuple(heat[5, 0]) == tuple(visualize.TURBO[-1])  # nearest: dark red
    assert tuple(heat[5, -1]) == tuple(visualize.TURBO[0])  # farthest: dark blue
    inverse = pixels(visualize.depth_panel(photo, depth, near_is_high=True))
    assert tuple(inverse[5, photo.width]) == tuple(visualize.TURBO[0])


def test_pca_colours_follow_the_features() -> None:
    rng = np.random.default_rng(0)
    # Two kinds of patch (left and right half of a 4 x 6 grid) plus a little noise.
    kinds = rng.normal(size=(2, 32))
    grid = np.zeros((4, 6), int)
    grid[:, 3:] = 1
    features = kinds[grid.ravel()] + 0.01 * rng.normal(size=(24, 32))
    rgb = visualize.pca_rgb(features, (4, 6))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :3].reshape(-1, 3), rgb[:, 3:].reshape(-1, 3)
    assert np.abs(left[:, 0].astype(int) - right[:, 0]).min() > 200  # PC1 splits the halves
    assert np.ptp(left[:, 0]) < 10 and np.ptp(right[:, 0]) < 10
    assert (visualize.pca_rgb(features, (4, 6)) == rgb).all()  # deterministic signs


def test_features_panel_is_the_photo_beside_its_components(photo: Image.Image) -> None:
    features = np.random.default_rng(1).normal(size=(14 * 14, 16))
    panel = visualize.features_panel(photo, features, (14, 14))
    image = decode(visualize.encode_png(panel))
    assert image.size == (photo.width * 2, photo.height)
    out = pixels(image)
    assert (out[:, : photo.width] == pixels(photo)).all()
    assert out[:, photo.width :].std() > 20


def test_labels_stay_inside_small_images() -> None:
    small = Image.new("RGB", (40, 30), (10, 200, 10))
    visualize.draw_label(small, (35, 28), "a long label 0.99", (200, 0, 0))
    out = pixels(small)
    assert (out == (200, 0, 0)).all(axis=2).any()


def test_png_is_the_image_exactly() -> None:
    """Lossless, in RGB order (OpenCV encodes BGR), whatever the image's mode."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for image in (Image.fromarray(rgb, "RGB"), Image.fromarray(rgb, "RGB").convert("RGBA")):
        decoded = decode(visualize.encode_png(image))
        assert decoded.mode == "RGB" and (pixels(decoded) == rgb).all()
