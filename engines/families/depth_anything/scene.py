"""Depth Anything 3 scenes: several views of one scene through one forward.

What the official package's ``DepthAnything3.inference`` does around its network, for uploaded
views, with every output mapped back to each view's input pixels:

1. Each view is resized as a single image is (:func:`preprocess_da3`: longest side to
   ``process_res``, sides to multiples of 14); views that then differ in size are centre-cropped
   to the smallest network height and width (the package's ``_unify_batch_shapes``), with given
   intrinsics shifted by the crop.
2. Given cameras are normalised (first view at the origin, median camera distance 1) before
   the network, whose camera tokens then come from them (pose-conditioned inference).
3. One forward over all views (graph ``scene``): depth, confidence, intrinsics and extrinsics
   per view, the predicted cameras in one world frame.
4. With given cameras, the prediction is aligned to them by a similarity (Umeyama, RANSAC from
   10 views; :func:`given_scale`): the result carries the given cameras and the depth divided
   by the alignment's scale, so it is in their world frame and units.
5. Depth and confidence are resampled to each view's input size (bilinear); pixels the crop
   removed are 0 in both. Predicted intrinsics move from network to input pixels.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engines.base import Task
from engines.errors import InvalidInputError, PayloadTooLargeError
from engines.families.depth_anything.maps import depth_to_png, resize_depth, scale_intrinsics
from engines.families.depth_anything.options import REF_VIEW_STRATEGIES, DepthSceneOptions
from engines.visualize import depth_panel, encode_png

# A view at process_res r costs (r / BUDGET_RES)² of the per-device view budget.
BUDGET_RES = 504
STRIP_ROW_HEIGHT = 256  # px per view in the visualization strip


def scene_cost(views: int, process_res: int) -> float:
    """Budget units of a scene: ``views`` at ``process_res``, counted as 504 px views."""
    return views * (process_res / BUDGET_RES) ** 2


def check_scene_budget(views: int, options: DepthSceneOptions, device: str, budget: float) -> None:
    """Raise a 413 when the scene costs more than ``budget`` on ``device`` (``cpu``/``cuda``)."""
    cost = scene_cost(views, options.process_res)
    if cost > budget:
        setting = f"scene_view_budget_{device}"
        raise PayloadTooLargeError(
            f"{views} views at process_res {options.process_res} count as {cost:g} views at "
            f"{BUDGET_RES} px; one scene forward on {device} takes at most {budget:g} on this "
            f"server ({setting}). Send fewer views or a lower process_res."
        )


@dataclass
class PreparedScene:
    """A scene's network inputs and what post-processing needs.

    Attributes:
        pixels: [S, 3, h, w] normalised views at one network size.
        input_sizes: (width, height) of each input image.
        resized_sizes: (width, height) of each view after resizing, before the common crop.
        crops: (left, top) of each view's crop in its resized pixels.
        extrinsics: Given [S, 4, 4] world-to-camera matrices, or None.
        intrinsics: Given [S, 3, 3] intrinsics in input pixels, or None.
        network_intrinsics: The given intrinsics in network pixels (after resize and crop).
        images: The RGB input images (colours for the point cloud, the visualization), or
            None when neither is asked for.
    """

    pixels: np.ndarray
    input_sizes: list[tuple[int, int]]
    resized_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    extrinsics: np.ndarray | None
    intrinsics: np.ndarray | None
    network_intrinsics: np.ndarray | None
    images: list[np.ndarray] | None


class SceneTask(Task[DepthSceneOptions]):
    """The ``scene`` task of an any-view DA3 pipeline, over its core's ``scene`` graph."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def prepare(self, images: Sequence[Image.Image], options: DepthSceneOptions) -> PreparedScene:
        """Resize, normalise and crop the views to one size; the given cameras to match."""
        from engines.families.depth_anything.da3 import preprocess_da3

        rgbs = [np.asarray(image.convert("RGB")) for image in images]
        views = [preprocess_da3(rgb, process_res=options.process_res).numpy() for rgb in rgbs]
        resized = [(v.shape[2], v.shape[1]) for v in views]
        net_w = min(w for w, _ in resized)
        net_h = min(h for _, h in resized)
        # Sides are multiples of 14, so the margins are even and the crop exactly centred.
        crops = [((w - net_w) // 2, (h - net_h) // 2) for w, h in resized]
        pixels = np.stack(
            [
                v[:, top : top + net_h, left : left + net_w]
                for v, (left, top) in zip(views, crops, strict=True)
            ]
        )
        input_sizes = [(rgb.shape[1], rgb.shape[0]) for rgb in rgbs]
        extrinsics = intrinsics = network_intrinsics = None
        if options.extrinsics is not None and options.intrinsics is not None:
            extrinsics = np.asarray(options.extrinsics, np.float64)
            intrinsics = np.asarray(options.intrinsics, np.float64)
            network_intrinsics = np.stack(
                [
                    to_network_intrinsics(k, size, size_r, crop)
                    for k, size, size_r, crop in zip(
                        intrinsics, input_sizes, resized, crops, strict=True
                    )
                ]
            )
        keep = options.point_cloud != "none" or options.visualize
        return PreparedScene(
            pixels=np.ascontiguousarray(pixels),
            input_sizes=input_sizes,
            resized_sizes=resized,
            crops=crops,
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            network_intrinsics=network_intrinsics,
            images=rgbs if keep else None,
        )

    def forward(self, prepared: PreparedScene, options: DepthSceneOptions) -> dict[str, Any]:
        """One forward of the ``scene`` graph over all views."""
        from engines.families.depth_anything.da3.align import normalize_extrinsics

        views = len(prepared.pixels)
        has_cameras = prepared.extrinsics is not None
        if prepared.extrinsics is not None and prepared.network_intrinsics is not None:
            extrinsics = normalize_extrinsics(prepared.extrinsics).astype(np.float32)
            intrinsics = prepared.network_intrinsics.astype(np.float32)
        else:  # unused by the graph without cameras, but every input is always fed
            extrinsics = np.tile(np.eye(4, dtype=np.float32), (views, 1, 1))
            intrinsics = np.tile(np.eye(3, dtype=np.float32), (views, 1, 1))
        return self.core.run(
            "scene",
            {
                "pixel_values": prepared.pixels,
                "given_extrinsics": extrinsics,
                "given_intrinsics": intrinsics,
                "has_cameras": np.array(has_cameras),
                "ref_strategy": np.array(
                    REF_VIEW_STRATEGIES.index(options.ref_view_strategy), np.int64
                ),
            },
        )

    def postprocess(
        self, raw: dict[str, Any], prepared: PreparedScene, options: DepthSceneOptions
    ) -> dict[str, Any]:
        """Align to given cameras, map to input pixels, encode; the point cloud if asked."""
        depth = np.asarray(raw["depth"], np.float32)
        confidence = np.asarray(raw["confidence"], np.float32)
        extrinsics = np.asarray(raw["extrinsics"], np.float64)
        if prepared.extrinsics is not None and prepared.intrinsics is not None:
            depth = depth / np.float32(given_scale(extrinsics, prepared.extrinsics))
            extrinsics = prepared.extrinsics[:, :3, :]
            intrinsics = prepared.intrinsics
        else:
            intrinsics = np.stack(
                [
                    to_input_intrinsics(k, size, size_r, crop)
                    for k, size, size_r, crop in zip(
                        np.asarray(raw["intrinsics"], np.float64),
                        prepared.input_sizes,
                        prepared.resized_sizes,
                        prepared.crops,
                        strict=True,
                    )
                ]
            )
        views: list[dict[str, Any]] = []
        maps: list[tuple[np.ndarray, np.ndarray]] = []
        for i, (width, height) in enumerate(prepared.input_sizes):
            args = (prepared.resized_sizes[i], prepared.crops[i], width, height)
            view_depth = to_input_pixels(depth[i], *args)
            view_confidence = to_input_pixels(confidence[i], *args)
            maps.append((view_depth, view_confidence))
            views.append(
                {
                    "width": width,
                    "height": height,
                    **_encoded("", view_depth, options.output_format),
                    **_encoded("confidence_", view_confidence, options.output_format),
                    "extrinsics": extrinsics[i].tolist(),
                    "intrinsics": intrinsics[i].tolist(),
                }
            )
        result: dict[str, Any] = {"views": views, "point_cloud": None}
        if options.point_cloud != "none":
            assert prepared.images is not None
            result["point_cloud"] = point_cloud(
                maps, intrinsics, extrinsics, prepared.images, options
            )
        if options.visualize:
            assert prepared.images is not None
            result["visualization"] = encode_png(
                strip([(image, d) for image, (d, _) in zip(prepared.images, maps, strict=True)])
            )
        return result


def given_scale(predicted: np.ndarray, given: np.ndarray) -> float:
    """How many predicted units one unit of the given cameras is.

    As the official package aligns: a similarity from the given to the predicted camera
    trajectory (Umeyama; RANSAC from 10 views). It needs 3 cameras not all in one place; with
    2 views (where the package fails) or such cameras, the ratio of the distances between the
    first two camera centres, and 1 when the given cameras do not move at all.
    """
    from engines.families.depth_anything.da3.align import (
        MIN_ALIGNMENT_VIEWS,
        RANSAC_MIN_VIEWS,
        align_poses_umeyama,
    )

    if len(given) >= MIN_ALIGNMENT_VIEWS:
        try:
            _, _, scale, _ = align_poses_umeyama(
                predicted, given, ransac=len(given) >= RANSAC_MIN_VIEWS, random_state=42
            )
            return float(scale)
        except InvalidInputError:
            pass  # degenerate cameras: fall back to the baseline below

    def centres(extrinsics: np.ndarray) -> np.ndarray:
        rotation, translation = extrinsics[:, :3, :3], extrinsics[:, :3, 3:]
        return (-np.swapaxes(rotation, 1, 2) @ translation)[..., 0]

    given_baseline = float(np.linalg.norm(np.diff(centres(given)[:2], axis=0)))
    predicted_baseline = float(np.linalg.norm(np.diff(centres(predicted)[:2], axis=0)))
    if given_baseline < 1e-9 or predicted_baseline < 1e-9:
        return 1.0
    return predicted_baseline / given_baseline


def _encoded(prefix: str, values: np.ndarray, output_format: str) -> dict[str, Any]:
    """``{prefix}min``, ``{prefix}max`` and the map (``depth`` for no prefix) as asked."""
    low, high = float(values.min()), float(values.max())
    key = f"{prefix.rstrip('_')}" if prefix else "depth"
    encoded = depth_to_png(values, low, high) if output_format == "png" else values
    return {f"{prefix}min": low, f"{prefix}max": high, key: encoded}


def to_network_intrinsics(
    intrinsics: np.ndarray,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    crop: tuple[int, int],
) -> np.ndarray:
    """Input-pixel intrinsics to the network's: scale by the resize, shift by the crop."""
    (width, height), (res_w, res_h), (left, top) = input_size, resized_size, crop
    k = np.array(intrinsics, np.float64)
    k[0] *= res_w / width
    k[1] *= res_h / height
    k[0, 2] -= left
    k[1, 2] -= top
    return k


def to_input_intrinsics(
    intrinsics: np.ndarray,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    crop: tuple[int, int],
) -> np.ndarray:
    """The inverse of :func:`to_network_intrinsics`."""
    left, top = crop
    k = np.array(intrinsics, np.float64)
    k[0, 2] += left
    k[1, 2] += top
    return scale_intrinsics(k, input_size, resized_size)


def to_input_pixels(
    values: np.ndarray,
    resized_size: tuple[int, int],
    crop: tuple[int, int],
    width: int,
    height: int,
) -> np.ndarray:
    """A network-size map resampled to the view's ``width`` x ``height`` input pixels.

    Bilinear, pixel centres aligned (``align_corners=False``), as the per-image endpoint
    resizes; where the crop removed the input's pixels, 0.
    """
    import torch
    import torch.nn.functional as F

    (res_w, res_h), (left, top) = resized_size, crop
    net_h, net_w = values.shape
    if (net_w, net_h) == (res_w, res_h):
        return resize_depth(values, width, height, "bilinear")
    # Input pixel centre → resized pixel → cropped (network) pixel → grid_sample's [-1, 1].
    xs = ((np.arange(width) + 0.5) * res_w / width - 0.5 - left + 0.5) / net_w * 2 - 1
    ys = ((np.arange(height) + 0.5) * res_h / height - 0.5 - top + 0.5) / net_h * 2 - 1
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).astype(np.float32)
    with torch.inference_mode():
        sampled = F.grid_sample(
            torch.from_numpy(np.ascontiguousarray(values, np.float32))[None, None],
            torch.from_numpy(grid)[None],
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )[0, 0].numpy()
    inside = (np.abs(grid[..., 0]) <= 1) & (np.abs(grid[..., 1]) <= 1)
    return np.where(inside, sampled, np.float32(0))


def point_cloud(
    maps: Sequence[tuple[np.ndarray, np.ndarray]],
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    images: Sequence[np.ndarray],
    options: DepthSceneOptions,
) -> dict[str, Any]:
    """The scene's points as the requested file, base64, with its world-to-file transform."""
    from engines.families.depth_anything.pointcloud import (
        ViewGeometry,
        scene_points,
        write_glb,
        write_ply,
    )

    views = [
        ViewGeometry(
            depth=depth,
            confidence=confidence,
            intrinsics=intrinsics[i],
            extrinsics=extrinsics[i],
            image=images[i],
        )
        for i, (depth, confidence) in enumerate(maps)
    ]
    points, colours = scene_points(
        views, conf_percentile=options.conf_percentile, max_points=options.max_points
    )
    if options.point_cloud == "glb":
        data, transform = write_glb(points, colours, views)
    else:
        data, transform = write_ply(points, colours), np.eye(4)
    return {
        "format": options.point_cloud,
        "points": len(points),
        "data": base64.b64encode(data).decode("ascii"),
        "transform": np.asarray(transform, np.float64).tolist(),
    }


def strip(views: Sequence[tuple[np.ndarray, np.ndarray]]) -> Image.Image:
    """One row per view, ``STRIP_ROW_HEIGHT`` px high: the image beside its depth in turbo."""
    rows = []
    for rgb, depth in views:
        panel = depth_panel(Image.fromarray(rgb), depth, near_is_high=False)
        width = max(1, round(panel.width * STRIP_ROW_HEIGHT / panel.height))
        rows.append(panel.resize((width, STRIP_ROW_HEIGHT), Image.Resampling.BILINEAR))
    canvas = Image.new("RGB", (max(r.width for r in rows), STRIP_ROW_HEIGHT * len(rows)))
    for index, row in enumerate(rows):
        canvas.paste(row, (0, index * STRIP_ROW_HEIGHT))
    return canvas
