"""Point clouds from per-view depth and cameras, and their PLY and GLB files.

Ported from the reference package's GLB export (``depth_anything_3/utils/export/glb.py``): the
adaptive confidence threshold, back-projection, uniform downsampling, the glTF alignment and
the camera frusta. Where ours differs, on purpose:

- Views come at their input-image resolution (each its own size) rather than the network's;
  pixels of confidence 0 (the network never saw them) count neither for the percentiles nor
  as points.
- Pixels are selected and downsampled before anything is back-projected, so memory follows
  ``max_points`` rather than the pixel count; the draw is seeded, not from the global numpy
  random state.
- :func:`scene_points` stays in the cameras' world frame; only :func:`write_glb` moves to the
  glTF frame, centred on the median of the points it is given (the downsampled ones; the
  reference takes the median before downsampling).

Pixel convention (the reference's): pixel ``(u, v)``, column ``u`` and row ``v`` counted from
0, is the ray ``K^-1 [u, v, 1]``, so integer coordinates are pixel centres; a point is that ray
scaled by the pixel's depth (``z`` in the camera frame), taken to the world frame.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BASE_CONFIDENCE_THRESHOLD = 1.05
UPPER_CONFIDENCE_PERCENTILE = 90.0  # the threshold never exceeds this percentile
CAMERA_SIZE = 0.03  # frustum depth as a fraction of the points' 5-95th percentile diagonal
_GLTF_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # x right, y down, z forward → y up, z backward
_PLY_VERTEX = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


@dataclass(frozen=True)
class ViewGeometry:
    """One view's depth, confidence, camera and colours, all in the same pixels.

    Attributes:
        depth: (H, W) float32 depth along the camera's z axis.
        confidence: (H, W) float32; 0 where the network saw no pixel (never a point).
        intrinsics: (3, 3) camera matrix in these pixels.
        extrinsics: (3, 4) world-to-camera, one world frame for all views.
        image: (H, W, 3) uint8 RGB colours.

    """

    depth: np.ndarray
    confidence: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    image: np.ndarray

    def __post_init__(self) -> None:
        """Refuse arrays of mismatched shapes, which would silently mix up pixels."""
        size = self.depth.shape
        if self.confidence.shape != size or self.image.shape != (*size, 3):
            raise ValueError(f"depth {size}, confidence and image must cover the same pixels")
        if self.intrinsics.shape != (3, 3) or self.extrinsics.shape != (3, 4):
            raise ValueError("intrinsics must be (3, 3) and extrinsics (3, 4)")


def confidence_threshold(views: Sequence[ViewGeometry], conf_percentile: float = 40.0) -> float:
    """The reference's adaptive confidence threshold over all views' seen pixels.

    ``min(max(1.05, P_conf_percentile), P_90)`` of the confidences above 0 of every view
    together (the reference's ``get_conf_thresh`` with ``conf_thresh=1.05``).

    Args:
        views: The views.
        conf_percentile: Lower percentile, 0 to 100.

    Returns:
        The threshold; ``inf`` (nothing passes) when no pixel was seen.

    """
    seen = _seen_confidences(views)
    if seen.size == 0:
        return np.inf
    lower, upper = np.percentile(
        seen, [conf_percentile, UPPER_CONFIDENCE_PERCENTILE], overwrite_input=True
    )
    return float(min(max(BASE_CONFIDENCE_THRESHOLD, lower), upper))


def scene_points(
    views: Sequence[ViewGeometry],
    *,
    conf_percentile: float = 40.0,
    max_points: int = 1_000_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The scene's point cloud in the cameras' world frame, with the pixels' colours.

    A pixel becomes a point when its confidence reaches :func:`confidence_threshold` and its
    depth is finite and positive. Beyond ``max_points`` such pixels, ``max_points`` of them are
    drawn uniformly without replacement (seeded, so the same call gives the same cloud).

    Args:
        views: The views, cameras in one world frame.
        conf_percentile: Lower percentile of the confidence threshold.
        max_points: Most points returned.
        seed: Seed of the downsampling draw.

    Returns:
        ``(points (M, 3) float32, colours (M, 3) uint8)``, view by view in pixel order.

    """
    threshold = confidence_threshold(views, conf_percentile)
    masks = [_valid_pixels(view, threshold) for view in views]
    chosen = _draw_pixels(masks, max_points, seed)
    points = [_unproject(view, pixels) for view, pixels in zip(views, chosen, strict=True)]
    colors = [view.image.reshape(-1, 3)[pixels] for view, pixels in zip(views, chosen, strict=True)]
    return (
        np.concatenate([np.zeros((0, 3), np.float32), *points]),
        np.concatenate([np.zeros((0, 3), np.uint8), *colors]),
    )


def write_ply(points: np.ndarray, colors: np.ndarray) -> bytes:
    """A binary little-endian PLY: vertices with float x, y, z and uchar red, green, blue.

    Args:
        points: (M, 3) coordinates (stored as float32).
        colors: (M, 3) uint8 RGB.

    Returns:
        The file's bytes.

    """
    vertices = np.empty(len(points), _PLY_VERTEX)
    for axis, name in enumerate(("x", "y", "z")):
        vertices[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, channel]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    return header.encode("ascii") + vertices.tobytes()


def write_glb(
    points: np.ndarray, colors: np.ndarray, views: Sequence[ViewGeometry]
) -> tuple[bytes, np.ndarray]:
    """A GLB of the point cloud and each camera as a wireframe pyramid, as the reference draws.

    The file's frame is the reference's glTF alignment: the first camera's axes turned to glTF
    (x right, y up, z backward), with the median of the points at the origin. Each frustum runs
    from the camera centre to its image corners at a depth of 3 % of the points' extent.

    Args:
        points: (M, 3) points in the world frame (:func:`scene_points`).
        colors: (M, 3) uint8 RGB.
        views: The views whose cameras are drawn; at least one (the first sets the frame).

    Returns:
        ``(GLB bytes, transform)``: the (4, 4) float64 matrix taking world points (homogeneous
        column vectors) to the file's frame; its inverse maps file coordinates back.

    """
    import trimesh  # only the GLB needs it (half a second to import)

    if not views:
        raise ValueError("a GLB needs at least one view")
    transform = gltf_alignment(views[0].extrinsics, points)
    file_points = _transform_points(points, transform)
    scene = trimesh.Scene()
    if len(file_points):
        scene.add_geometry(trimesh.PointCloud(vertices=file_points, colors=colors))
    camera_size = _scene_extent(file_points) * CAMERA_SIZE
    for index, view in enumerate(views):
        segments = _transform_points(_frustum_segments(view, camera_size).reshape(-1, 3), transform)
        path = trimesh.load_path(segments.reshape(-1, 2, 3))
        path.colors = np.tile(_camera_color(index, len(views)), (len(path.entities), 1))
        scene.add_geometry(path)
    return scene.export(file_type="glb"), transform


def gltf_alignment(first_extrinsics: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The reference's world → glTF transform: first camera's axes, centred on the points.

    Args:
        first_extrinsics: (3, 4) or (4, 4) world-to-camera of the first view.
        points: (M, 3) world points; their median (in the camera's glTF axes) becomes the
            origin, or nothing moves when there are none.

    Returns:
        (4, 4) float64 matrix ``A`` with ``file = A @ [world; 1]``.

    """
    world_to_camera = np.eye(4)
    world_to_camera[: first_extrinsics.shape[0]] = first_extrinsics
    uncentred = _GLTF_FROM_CV @ world_to_camera
    centring = np.eye(4)
    if len(points):
        centring[:3, 3] = -np.median(_transform_points(points, uncentred), axis=0)
    return centring @ uncentred


def _seen_confidences(views: Sequence[ViewGeometry]) -> np.ndarray:
    """All views' confidences above 0 in one float32 array, copied once."""
    counts = [int(np.count_nonzero(view.confidence > 0)) for view in views]
    seen = np.empty(sum(counts), np.float32)
    start = 0
    for view, count in zip(views, counts, strict=True):
        seen[start : start + count] = view.confidence[view.confidence > 0]
        start += count
    return seen


def _valid_pixels(view: ViewGeometry, threshold: float) -> np.ndarray:
    """(H, W) mask of the view's pixels that become points.

    The threshold is a percentile of positive confidences, so it is positive itself and unseen
    pixels (confidence 0) never pass it.
    """
    depth = view.depth
    return (view.confidence >= threshold) & np.isfinite(depth) & (depth > 0)


def _draw_pixels(masks: Sequence[np.ndarray], max_points: int, seed: int) -> list[np.ndarray]:
    """Per view, the flat indices of the masked pixels kept: all, or a uniform seeded draw."""
    counts = np.array([np.count_nonzero(mask) for mask in masks], np.int64)
    total = int(counts.sum())
    if total <= max_points:
        return [np.flatnonzero(mask) for mask in masks]
    # Ranks among all views' valid pixels; only one view's indices exist at a time.
    # shuffle=False keeps numpy on its set-based draw for large totals (no arange(total)).
    ranks = np.sort(
        np.random.default_rng(seed).choice(total, size=max_points, replace=False, shuffle=False)
    )
    starts = np.concatenate([[0], np.cumsum(counts)])
    bounds = np.searchsorted(ranks, starts)
    return [
        np.flatnonzero(mask)[ranks[bounds[i] : bounds[i + 1]] - starts[i]]
        for i, mask in enumerate(masks)
    ]


def _unproject(view: ViewGeometry, pixels: np.ndarray) -> np.ndarray:
    """World points (float32) of the given flat pixel indices of one view."""
    rows, columns = np.divmod(pixels, view.depth.shape[1])
    homogeneous = np.stack([columns, rows, np.ones_like(columns)], axis=-1).astype(np.float64)
    depth = view.depth.reshape(-1)[pixels].astype(np.float64)
    camera_points = (homogeneous @ np.linalg.inv(view.intrinsics).T) * depth[:, None]
    world_to_camera = np.eye(4)
    world_to_camera[:3] = view.extrinsics
    return _transform_points(camera_points, np.linalg.inv(world_to_camera)).astype(np.float32)


def _transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(M, 3) points through a (4, 4) affine matrix, in float64."""
    return points.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def _scene_extent(points: np.ndarray) -> float:
    """Diagonal of the points' 5th-95th percentile box; 1 when there is none to measure."""
    if len(points) < 2:
        return 1.0
    low, high = np.percentile(points, [5, 95], axis=0)
    diagonal = float(np.linalg.norm(high - low))
    return diagonal if np.isfinite(diagonal) and diagonal > 0 else 1.0


def _frustum_segments(view: ViewGeometry, size: float) -> np.ndarray:
    """(8, 2, 3) world segments: centre to each image corner at depth ``size``, then the rim."""
    height, width = view.depth.shape
    corners = np.array(
        [[0, 0, 1], [width - 1, 0, 1], [width - 1, height - 1, 1], [0, height - 1, 1]]
    )
    rays = corners @ np.linalg.inv(view.intrinsics).T
    rays[rays[:, 2] == 0, 2] = 1.0
    plane = rays / rays[:, 2:] * size
    world_to_camera = np.eye(4)
    world_to_camera[:3] = view.extrinsics
    camera_to_world = np.linalg.inv(world_to_camera)
    centre = camera_to_world[:3, 3]
    rim = _transform_points(plane, camera_to_world)
    spokes = [(centre, corner) for corner in rim]
    edges = [(rim[k], rim[(k + 1) % 4]) for k in range(4)]
    return np.array(spokes + edges)


def _camera_color(index: int, count: int) -> np.ndarray:
    """The reference's camera colours: hues spread evenly around the wheel."""
    rgb = colorsys.hsv_to_rgb((index + 0.5) / max(count, 1), 0.85, 0.95)
    return (np.array(rgb) * 255).astype(np.uint8)
