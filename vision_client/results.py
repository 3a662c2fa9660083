"""Response types, and decoding of masks, depth maps and visualizations into numpy / PIL.

The Structs name the fields the client reads; fields a newer server adds are ignored.
"""

from __future__ import annotations

import base64
import builtins
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

PNG_LEVELS = 65535


def decode_png_image(data: str) -> PILImage.Image:
    """A base64 PNG (a visualization, a mask, a depth map) as a loaded PIL image."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _rle_to_mask(size: list[int], counts: str) -> np.ndarray:
    """COCO compressed RLE to a (height, width) bool mask (pycocotools' string format)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            char = ord(counts[position]) - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    height, width = size
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T  # COCO runs are column-major


def _polygons_to_mask(polygons: list[list[int]], height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 6:
            draw.polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon), 2)], 1, 1)
    return np.asarray(canvas, dtype=bool)


def _is_dense(mask: Any, height: int, width: int) -> bool:
    return len(mask) == height and all(len(row) == width for row in mask)


def decode_mask(mask: Any, height: int, width: int, output_format: str | None = None) -> np.ndarray:
    """A mask in any ``output_format`` as a (height, width) bool array.

    Args:
        mask: The ``mask`` of a SAM3 instance: an RLE object, a base64 PNG, dense rows or
            polygons.
        height: The image height (the result's ``height``).
        width: The image width.
        output_format: ``dense``, ``rle``, ``polygon`` or ``png``; inferred when omitted (a list
            of ``height`` rows of ``width`` values is dense, other lists are polygons).

    Returns:
        The mask; a polygon gives its (simplified) outline filled, not the exact pixels.
    """
    if isinstance(mask, msgspec.Struct):
        mask = msgspec.to_builtins(mask)
    if output_format is None:
        if isinstance(mask, dict):
            output_format = "rle"
        elif isinstance(mask, str):
            output_format = "png"
        else:
            output_format = "dense" if _is_dense(mask, height, width) else "polygon"
    if output_format == "dense":
        return np.asarray(mask, dtype=np.uint8).reshape(height, width).astype(bool)
    if output_format == "rle":
        return _rle_to_mask(mask["size"], mask["counts"])
    if output_format == "png":
        return np.asarray(decode_png_image(mask)) > 0
    if output_format == "polygon":
        return _polygons_to_mask(mask, height, width)
    raise ValueError(f"unknown mask format {output_format!r}")


def decode_depth(depth: Any, minimum: float, maximum: float) -> np.ndarray:
    """A depth map (rows of floats, or a base64 16-bit PNG) as a float32 (height, width) array.

    A PNG value ``v`` maps back to ``min + v / 65535 * (max - min)``.
    """
    if isinstance(depth, str):
        levels = np.asarray(decode_png_image(depth), dtype=np.float64)
        return (minimum + levels / PNG_LEVELS * (maximum - minimum)).astype(np.float32)
    return np.asarray(depth, dtype=np.float32)


class _Visualized(msgspec.Struct, kw_only=True):
    visualization: str | None = None

    def visualization_image(self) -> PILImage.Image | None:
        """The visualization (``visualize=True``) as a PIL image; None when not asked for."""
        return None if self.visualization is None else decode_png_image(self.visualization)


class InferenceResponse(msgspec.Struct, kw_only=True):
    """Fields every inference response has."""

    model_type: str
    variant: str
    engine: str
    device: str
    timings_ms: dict[str, float]


class Sam3Instance(msgspec.Struct, kw_only=True):
    """One segmented instance; ``mask`` as the server sent it (see :meth:`Sam3Result.masks`)."""

    prompt: str
    prompt_index: int
    score: float
    box: list[float]
    area: int
    mask: Any


class Sam3Result(_Visualized, kw_only=True):
    """The instances found in one image, by score, descending."""

    width: int
    height: int
    instances: list[Sam3Instance]
    output_format: str | None = None

    def masks(self) -> np.ndarray:
        """Every instance's mask as one (instances, height, width) bool array."""
        decoded = [
            decode_mask(i.mask, self.height, self.width, self.output_format) for i in self.instances
        ]
        if not decoded:
            return np.zeros((0, self.height, self.width), bool)
        return np.stack(decoded)


class Sam3Response(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[Sam3Result]


class Sam3EmbedResponse(InferenceResponse, kw_only=True):
    """One ``image_id`` per input image, for ``{"image_id": ...}`` items of later requests."""

    image_ids: list[str]
    expires_in_s: float


class Detection(msgspec.Struct, kw_only=True):
    """One detected object, in input-image pixels."""

    label: str
    prompt_index: int
    score: float
    box: list[float]


class GroundingDinoResult(_Visualized, kw_only=True):
    """The detections in one image, by score, descending."""

    width: int
    height: int
    detections: list[Detection]


class GroundingDinoResponse(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[GroundingDinoResult]


class DepthResult(_Visualized, kw_only=True):
    """The depth map of one image; :meth:`array` decodes it whichever format it came in."""

    width: int
    height: int
    kind: str
    units: str | None = None
    relation: str
    min: float
    max: float
    depth: Any
    confidence: dict[str, float] | None = None
    intrinsics: list[list[float]] | None = None
    focal_px: float | None = None
    focal_source: str | None = None
    sky_fraction: float | None = None

    def array(self) -> np.ndarray:
        """The depth map as a float32 (height, width) array."""
        return decode_depth(self.depth, self.min, self.max)


class DepthResponse(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[DepthResult]


class SceneView(msgspec.Struct, kw_only=True):
    """One view of a scene: depth, confidence and camera, in the view's input pixels.

    Depth is along the camera's z axis, in one scale shared by every view of the response;
    pixels the network never saw (cropped away to bring the views to one size) are 0 in both
    maps.
    """

    width: int
    height: int
    min: float
    max: float
    depth: Any
    confidence_min: float
    confidence_max: float
    confidence: Any
    extrinsics: list[list[float]]
    intrinsics: list[list[float]]

    def depth_array(self) -> np.ndarray:
        """The depth map as a float32 (height, width) array, from array or PNG output alike."""
        return decode_depth(self.depth, self.min, self.max)

    def confidence_array(self) -> np.ndarray:
        """The confidence map (>= 1 where seen, 0 where not) as a float32 (height, width) array."""
        return decode_depth(self.confidence, self.confidence_min, self.confidence_max)

    def extrinsics_matrix(self) -> np.ndarray:
        """World-to-camera as a float64 (4, 4) matrix (the 3x4 ``extrinsics`` and 0 0 0 1)."""
        matrix = np.eye(4)
        matrix[:3] = np.asarray(self.extrinsics, np.float64)
        return matrix

    def intrinsics_matrix(self) -> np.ndarray:
        """The float64 (3, 3) camera matrix, in the view's input pixels."""
        return np.asarray(self.intrinsics, np.float64)

    def camera_centre(self) -> np.ndarray:
        """Where the camera is in the world frame: ``-R^T t`` of ``extrinsics = [R | t]``."""
        extrinsics = np.asarray(self.extrinsics, np.float64)
        return -extrinsics[:, :3].T @ extrinsics[:, 3]


class ScenePointCloud(msgspec.Struct, kw_only=True):
    """The scene's point cloud file (PLY or GLB), base64 in ``data``."""

    format: str
    points: int
    data: str
    transform: list[list[float]]

    def bytes(self) -> builtins.bytes:
        """The file's bytes."""
        return base64.b64decode(self.data)

    def save(self, path: str | Path) -> Path:
        """Write the file to ``path``; returns it as a ``Path``."""
        target = Path(path)
        target.write_bytes(self.bytes())
        return target

    def transform_matrix(self) -> np.ndarray:
        """World to file coordinates, float64 (4, 4): the identity for PLY."""
        return np.asarray(self.transform, np.float64)


class DepthSceneResponse(InferenceResponse, kw_only=True):
    """One view per input image, in order; the point cloud and visualization when asked."""

    views: list[SceneView]
    point_cloud: ScenePointCloud | None = None
    visualization: str | None = None

    def visualization_image(self) -> PILImage.Image | None:
        """The strip (``visualize=True``, one row per view) as a PIL image; else None."""
        return None if self.visualization is None else decode_png_image(self.visualization)


class PatchFeatures(msgspec.Struct, kw_only=True):
    """Patch tokens in row-major order on a ``rows x cols`` grid."""

    grid: list[int]
    dim: int
    data: list[list[float]]

    def array(self) -> np.ndarray:
        """The features as a float32 (rows, cols, dim) array."""
        return np.asarray(self.data, np.float32).reshape(self.grid[0], self.grid[1], self.dim)


class Dinov3Result(_Visualized, kw_only=True):
    """Features of one image."""

    dim: int
    embedding: list[float] | None = None
    patch_features: PatchFeatures | None = None

    def embedding_array(self) -> np.ndarray | None:
        """The embedding as a float32 vector (None with ``pooling="none"``)."""
        return None if self.embedding is None else np.asarray(self.embedding, np.float32)


class Dinov3Response(InferenceResponse, kw_only=True):
    """One result per input image, in order."""

    results: list[Dinov3Result]


class ModelStatus(msgspec.Struct, kw_only=True):
    """One known variant (the main fields of ``GET /models/status`` entries)."""

    model_type: str
    variant: str
    default: bool
    loaded: bool
    device: str | None = None
    engine: str | None = None
    dtype: str | None = None
    memory_mb: float | None = None
    requests: int = 0
    fallback_reason: str | None = None


class ModelRef(msgspec.Struct, kw_only=True):
    """A (model type, variant) pair."""

    model_type: str
    variant: str


class UnloadResult(msgspec.Struct, kw_only=True):
    """What was unloaded."""

    unloaded: list[ModelRef]


class JobInfo(msgspec.Struct, kw_only=True):
    """A job's state; ``result`` (once completed) is the inference response as a dict."""

    job_id: str
    model_type: str
    status: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None


class JobList(msgspec.Struct, kw_only=True):
    """Jobs, newest first; ``total`` counts every match."""

    jobs: list[JobInfo]
    total: int


RESPONSE_TYPES: dict[str, type[InferenceResponse]] = {
    "sam3": Sam3Response,
    "grounding-dino": GroundingDinoResponse,
    "depth-anything": DepthResponse,
    "depth-anything-scene": DepthSceneResponse,
    "dinov3": Dinov3Response,
}
