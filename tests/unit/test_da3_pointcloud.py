"""Point clouds, PLY and GLB from synthetic scenes whose geometry is known in closed form.

Two cameras look at the plane z = 4; each pixel's colour is (u, v, view), so every point says
which pixel it came from and can be checked against that pixel's ray.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trimesh

from engines.families.depth_anything.pointcloud import (
    ViewGeometry,
    confidence_threshold,
    gltf_alignment,
    scene_points,
    write_glb,
    write_ply,
)

PLANE_Z = 4.0
SIZES = [(24, 32), (20, 36)]  # (H, W) of each view: views need not share a size


def rotation_about_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def camera(size: tuple[int, int], centre: tuple[float, ...], angle: float) -> dict[str, Any]:
    height, width = size
    intrinsics = np.array([[30.0, 0, width / 2], [0, 28.0, height / 2], [0, 0, 1]])
    rotation = rotation_about_y(angle)  # camera-to-world
    extrinsics = np.hstack([rotation.T, -rotation.T @ np.array(centre)[:, None]])
    return {"intrinsics": intrinsics, "extrinsics": extrinsics, "rotation": rotation}


def ray(cam: dict[str, Any], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World direction of pixel (u, v), scaled so that its camera-z component is 1."""
    pixel = np.stack([u, v, np.ones_like(u)], axis=-1).astype(np.float64)
    return pixel @ np.linalg.inv(cam["intrinsics"]).T @ cam["rotation"].T


def centre_of(cam: dict[str, Any]) -> np.ndarray:
    return -cam["extrinsics"][:, :3].T @ cam["extrinsics"][:, 3]


def plane_views(confidences: list[np.ndarray] | None = None, seed: int = 0) -> list[ViewGeometry]:
    """Two views of the plane z = 4, depth exact, colours (u, v, view index)."""
    rng = np.random.default_rng(seed)
    cams = [camera(SIZES[0], (0.0, 0.0, 0.0), 0.0), camera(SIZES[1], (1.0, 0.2, 0.5), -0.2)]
    views = []
    for index, (size, cam) in enumerate(zip(SIZES, cams, strict=True)):
        v, u = np.indices(size)
        depth = (PLANE_Z - centre_of(cam)[2]) / ray(cam, u, v)[..., 2]
        image = np.stack([u, v, np.full(size, index)], axis=-1).astype(np.uint8)
        conf = rng.uniform(0.5, 3.0, size) if confidences is None else confidences[index]
        views.append(
            ViewGeometry(
                depth=depth.astype(np.float32),
                confidence=conf.astype(np.float32),
                intrinsics=cam["intrinsics"],
                extrinsics=cam["extrinsics"],
                image=image,
            )
        )
    return views


def expected_point(view: ViewGeometry, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The unprojection of pixel (u, v) at its depth, computed independently per pixel."""
    rotation = view.extrinsics[:, :3].T
    cam = {"intrinsics": view.intrinsics, "rotation": rotation}
    centre = -rotation @ view.extrinsics[:, 3]
    return centre + ray(cam, u, v) * view.depth[v, u].astype(np.float64)[:, None]


def pixel_ids(colors: np.ndarray) -> set[tuple[int, int, int]]:
    """(view, u, v) of each point, read from its colour."""
    return {(int(c[2]), int(c[0]), int(c[1])) for c in colors}


def hand_threshold(views: list[ViewGeometry], percentile: float) -> float:
    seen = np.concatenate([v.confidence[v.confidence > 0] for v in views])
    lower, upper = np.percentile(seen, percentile), np.percentile(seen, 90)
    return float(min(max(1.05, lower), upper))


def expected_ids(views: list[ViewGeometry], threshold: float) -> set[tuple[int, int, int]]:
    ids = set()
    for index, view in enumerate(views):
        keep = (view.confidence >= threshold) & np.isfinite(view.depth) & (view.depth > 0)
        ids |= {(index, int(u), int(v)) for v, u in zip(*np.nonzero(keep), strict=True)}
    return ids


# ---------------------------------------------------------------- points


def test_every_point_is_its_pixels_unprojection() -> None:
    views = plane_views()
    points, colors = scene_points(views)
    assert points.dtype == np.float32 and colors.dtype == np.uint8
    assert len(points) > 100
    np.testing.assert_allclose(points[:, 2], PLANE_Z, atol=1e-4)  # on the plane
    view_index = colors[:, 2]
    for index, view in enumerate(views):
        mine = view_index == index
        u, v = colors[mine, 0].astype(int), colors[mine, 1].astype(int)
        np.testing.assert_allclose(points[mine], expected_point(view, u, v), atol=1e-5)


@pytest.mark.parametrize(
    ("low", "high", "regime"),
    [(0.5, 3.0, "lower percentile"), (0.5, 1.5, "base 1.05"), (0.1, 0.9, "90th percentile")],
)
def test_confidence_filter_follows_the_percentile_rule(
    low: float, high: float, regime: str
) -> None:
    rng = np.random.default_rng(1)
    confidences = [rng.uniform(low, high, size) for size in SIZES]
    confidences[0][:, :5] = 0.0  # unseen columns: excluded, and not in the percentiles
    views = plane_views(confidences)
    threshold = hand_threshold(views, 40.0)
    seen = np.concatenate([c[c > 0] for c in confidences])
    expected_value = {
        "lower percentile": np.percentile(seen, 40),
        "base 1.05": 1.05,
        "90th percentile": np.percentile(seen, 90),
    }[regime]
    assert threshold == pytest.approx(expected_value, rel=1e-6)
    assert confidence_threshold(views, 40.0) == pytest.approx(threshold, rel=1e-6)
    _, colors = scene_points(views, conf_percentile=40.0)
    assert pixel_ids(colors) == expected_ids(views, threshold)
    assert all(u >= 5 for view, u, _ in pixel_ids(colors) if view == 0)


def test_conf_percentile_moves_the_threshold() -> None:
    views = plane_views()
    _, loose = scene_points(views, conf_percentile=10.0)
    _, strict = scene_points(views, conf_percentile=70.0)
    assert pixel_ids(strict) == expected_ids(views, hand_threshold(views, 70.0))
    assert pixel_ids(strict) < pixel_ids(loose)


def test_bad_depth_is_never_a_point() -> None:
    views = plane_views([np.full(size, 2.0) for size in SIZES])
    depth = views[0].depth.copy()
    depth[0, :4] = [np.nan, np.inf, 0.0, -1.0]
    views[0] = ViewGeometry(**{**views[0].__dict__, "depth": depth})
    _, colors = scene_points(views)
    ids = pixel_ids(colors)
    assert {(0, u, 0) for u in range(4)}.isdisjoint(ids)
    assert (0, 4, 0) in ids
    assert len(ids) == sum(h * w for h, w in SIZES) - 4


def test_nothing_seen_gives_an_empty_cloud() -> None:
    views = plane_views([np.zeros(size) for size in SIZES])
    points, colors = scene_points(views)
    assert points.shape == (0, 3) and colors.shape == (0, 3)
    assert points.dtype == np.float32 and colors.dtype == np.uint8


def test_max_points_draws_a_seeded_uniform_subset() -> None:
    views = plane_views([np.full(size, 2.0) for size in SIZES])
    every = pixel_ids(scene_points(views)[1])
    points, colors = scene_points(views, max_points=300, seed=5)
    assert len(points) == 300
    ids = pixel_ids(colors)
    assert len(ids) == 300 and ids <= every  # no pixel twice, all valid
    again = scene_points(views, max_points=300, seed=5)
    np.testing.assert_array_equal(again[0], points)
    np.testing.assert_array_equal(again[1], colors)
    assert pixel_ids(scene_points(views, max_points=300, seed=6)[1]) != ids
    # Both views are drawn from, in proportion to their valid pixels (768 and 720).
    from_first = sum(1 for view, _, _ in ids if view == 0)
    assert 120 < from_first < 190
    for index, view in enumerate(views):
        mine = colors[:, 2] == index
        u, v = colors[mine, 0].astype(int), colors[mine, 1].astype(int)
        np.testing.assert_allclose(points[mine], expected_point(view, u, v), atol=1e-5)


def test_mismatched_view_arrays_are_refused() -> None:
    view = plane_views()[0]
    with pytest.raises(ValueError, match="same pixels"):
        ViewGeometry(**{**view.__dict__, "confidence": view.confidence[1:]})


# ---------------------------------------------------------------- against the reference export


def reference_glb_functions(*names: str) -> dict[str, Any]:
    """Functions from the reference's glb.py, which does not import here (its package does not)."""
    package = pytest.importorskip("depth_anything_3")
    source = (Path(next(iter(package.__path__))) / "utils" / "export" / "glb.py").read_text()
    module = ast.parse(source)
    future = [n for n in module.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    wanted = [n for n in module.body if getattr(n, "name", None) in names]
    namespace: dict[str, Any] = {"np": np, "trimesh": trimesh}
    exec(compile(ast.Module(body=future + wanted, type_ignores=[]), "glb.py", "exec"), namespace)
    return namespace


def test_points_and_threshold_equal_the_reference_export() -> None:
    ref = reference_glb_functions(
        "get_conf_thresh", "_as_homogeneous44", "_depths_to_world_points_with_colors"
    )
    size = (min(h for h, _ in SIZES), min(w for _, w in SIZES))
    views = [ViewGeometry(**{**v.__dict__, **_same_size_arrays(v, size)}) for v in plane_views()]
    stacked = {name: np.stack([getattr(v, name) for v in views]) for name in views[0].__dict__}
    threshold = ref["get_conf_thresh"](
        SimpleNamespace(conf=stacked["confidence"]), None, 1.05, 40.0, 90.0
    )
    expected = ref["_depths_to_world_points_with_colors"](
        stacked["depth"],
        stacked["intrinsics"],
        stacked["extrinsics"],
        stacked["image"],
        stacked["confidence"],
        threshold,
    )
    assert confidence_threshold(views, 40.0) == pytest.approx(threshold)
    points, colors = scene_points(views)
    np.testing.assert_allclose(points, expected[0], atol=1e-6)
    np.testing.assert_array_equal(colors, expected[1])


def _same_size_arrays(view: ViewGeometry, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The view's pixel arrays cropped to ``size`` (the reference stacks equal-size views)."""
    height, width = size
    return {
        "depth": view.depth[:height, :width],
        "confidence": view.confidence[:height, :width],
        "image": view.image[:height, :width],
    }


def test_alignment_and_frusta_equal_the_reference_export() -> None:
    ref = reference_glb_functions(
        "_as_homogeneous44",
        "_compute_alignment_transform_first_cam_glTF_center_by_points",
        "_camera_frustum_lines",
    )
    views = plane_views()
    points, _ = scene_points(views)
    expected = ref["_compute_alignment_transform_first_cam_glTF_center_by_points"](
        views[0].extrinsics, points
    )
    np.testing.assert_allclose(gltf_alignment(views[0].extrinsics, points), expected, atol=1e-12)
    transform = gltf_alignment(views[0].extrinsics, points)
    scene = load_glb(write_glb(points, np.zeros_like(points, np.uint8), views)[0])
    paths = [g for g in scene.geometry.values() if isinstance(g, trimesh.path.Path3D)]
    file_points = points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
    low, high = np.percentile(file_points, [5, 95], axis=0)
    camera_size = 0.03 * np.linalg.norm(high - low)
    for view in views:
        height, width = view.depth.shape
        segments = ref["_camera_frustum_lines"](
            view.intrinsics, view.extrinsics, width, height, camera_size
        ).reshape(-1, 3)
        corners = segments @ transform[:3, :3].T + transform[:3, 3]
        assert any(_same_vertex_set(path.vertices, corners) for path in paths)


def _same_vertex_set(vertices: np.ndarray, expected: np.ndarray) -> bool:
    distances = np.linalg.norm(vertices[:, None] - expected[None], axis=-1)
    return bool(distances.min(axis=1).max() < 1e-5 and distances.min(axis=0).max() < 1e-5)


# ---------------------------------------------------------------- files


def test_ply_round_trips_exactly() -> None:
    plyfile = pytest.importorskip("plyfile")
    points, colors = scene_points(plane_views())
    data = write_ply(points, colors)
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\n")
    vertex = plyfile.PlyData.read(io.BytesIO(data))["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert vertex["x"].dtype == np.float32 and vertex["red"].dtype == np.uint8
    np.testing.assert_array_equal(np.stack([vertex[a] for a in "xyz"], axis=-1), points)
    np.testing.assert_array_equal(
        np.stack([vertex[c] for c in ("red", "green", "blue")], -1), colors
    )


def test_empty_ply_parses() -> None:
    plyfile = pytest.importorskip("plyfile")
    data = write_ply(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    assert plyfile.PlyData.read(io.BytesIO(data))["vertex"].count == 0


def load_glb(data: bytes) -> trimesh.Scene:
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    assert isinstance(scene, trimesh.Scene)
    return scene


def test_glb_holds_the_transformed_cloud_and_one_frustum_per_camera() -> None:
    views = plane_views()
    points, colors = scene_points(views, max_points=500)
    data, transform = write_glb(points, colors, views)
    scene = load_glb(data)
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    paths = [g for g in scene.geometry.values() if isinstance(g, trimesh.path.Path3D)]
    assert len(clouds) == 1 and len(paths) == len(views)
    assert len(scene.geometry) == 1 + len(views)
    for name in scene.graph.nodes_geometry:  # geometry is stored in the file's frame
        np.testing.assert_allclose(scene.graph[name][0], np.eye(4))
    (cloud,) = clouds
    file_points = points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
    np.testing.assert_allclose(cloud.vertices, file_points, atol=1e-5)
    np.testing.assert_array_equal(cloud.colors[:, :3], colors)
    # The transform is the first camera's axes in glTF (y up, z backward), centred on the points.
    first_rotation = views[0].extrinsics[:, :3]
    np.testing.assert_allclose(transform[:3, :3], np.diag([1, -1, -1]) @ first_rotation)
    np.testing.assert_allclose(np.median(file_points, axis=0), 0.0, atol=1e-9)
    # Each camera's centre is the apex of one frustum.
    for view in views:
        apex = transform[:3, :3] @ centre_of({"extrinsics": view.extrinsics}) + transform[:3, 3]
        assert sum(np.linalg.norm(p.vertices - apex, axis=1).min() < 1e-5 for p in paths) == 1


def test_glb_without_points_still_draws_the_cameras() -> None:
    views = plane_views()
    data, transform = write_glb(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), views)
    scene = load_glb(data)
    assert not any(isinstance(g, trimesh.PointCloud) for g in scene.geometry.values())
    assert len(scene.geometry) == len(views)
    np.testing.assert_allclose(transform[:3, 3], 0.0)  # nothing to centre on
