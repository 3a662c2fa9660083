"""The scene task's geometry bookkeeping: intrinsics between input and network pixels, maps
back to input pixels around the common crop, the view budget and the request's checks."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from engines.errors import PayloadTooLargeError
from engines.families.depth_anything.maps import resize_depth
from engines.families.depth_anything.options import DepthSceneOptions
from engines.families.depth_anything.scene import (
    check_scene_budget,
    scene_cost,
    to_input_intrinsics,
    to_input_pixels,
    to_network_intrinsics,
)

K = np.array([[600.0, 0.0, 321.5], [0.0, 590.0, 239.0], [0.0, 0.0, 1.0]])


def test_intrinsics_go_to_network_pixels_and_back() -> None:
    # 640x480 resized to 504x378, cropped to 504x336 (21 rows off the top and the bottom).
    network = to_network_intrinsics(K, (640, 480), (504, 378), (0, 21))
    assert network[0, 0] == pytest.approx(600 * 504 / 640)
    assert network[1, 1] == pytest.approx(590 * 378 / 480)
    assert network[1, 2] == pytest.approx(239 * 378 / 480 - 21)
    np.testing.assert_allclose(
        to_input_intrinsics(network, (640, 480), (504, 378), (0, 21)), K, rtol=1e-12
    )


def test_an_uncropped_map_is_resized_as_the_per_image_endpoint_resizes() -> None:
    values = np.random.default_rng(0).random((27, 36)).astype(np.float32)
    np.testing.assert_array_equal(
        to_input_pixels(values, (36, 27), (0, 0), 100, 75),
        resize_depth(values, 100, 75, "bilinear"),
    )


def test_a_cropped_map_lands_on_the_pixels_it_came_from_and_zero_elsewhere() -> None:
    # Network 28 x 14 from a view resized to 28 x 42 (14 rows cropped off top and bottom), at
    # an input size of 56 x 84 (twice the resized size).
    rows = np.arange(14, dtype=np.float32)[:, None] + 1  # value = network row + 1
    values = np.repeat(rows, 28, axis=1)
    out = to_input_pixels(values, (28, 42), (0, 14), 56, 84)
    assert out.shape == (84, 56)
    assert (out[:28] == 0).all() and (out[56:] == 0).all()  # the cropped thirds
    # Input row y sits at resized row (y + 0.5) / 2 - 0.5, network row that minus 14.
    for y in range(30, 54):
        expected = np.clip((y + 0.5) / 2 - 0.5 - 14, 0, 13) + 1
        np.testing.assert_allclose(out[y], expected, rtol=1e-5)


def test_the_budget_counts_views_at_504_px() -> None:
    options = DepthSceneOptions(process_res=1008)
    assert scene_cost(4, 504) == 4 and scene_cost(2, 1008) == 8
    check_scene_budget(2, options, "cpu", 8)
    with pytest.raises(PayloadTooLargeError, match="scene_view_budget_cuda"):
        check_scene_budget(3, options, "cuda", 8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"extrinsics": [np.eye(4).tolist()]}, "together"),
        (
            {"extrinsics": [np.diag([2.0, 1, 1, 1]).tolist()], "intrinsics": [K.tolist()]},
            "rigid",
        ),
        (
            {"extrinsics": [np.diag([-1.0, 1, 1, 1]).tolist()], "intrinsics": [K.tolist()]},
            "rigid",  # a reflection, not a rotation
        ),
        ({"extrinsics": [np.eye(3).tolist()], "intrinsics": [K.tolist()]}, "4x4"),
        ({"extrinsics": [np.eye(4).tolist()], "intrinsics": [np.zeros((3, 3)).tolist()]}, "fx"),
    ],
)
def test_cameras_are_checked_at_the_edge(fields: dict, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(fields, DepthSceneOptions)
