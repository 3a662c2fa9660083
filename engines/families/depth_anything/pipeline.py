"""The Depth Anything pipeline: pre-processing, one forward, post-processing.

One family, two network kinds, told apart by the checkpoint's ``config.json``: DA3 checkpoints
name a preset (``{"model_name": "da3-small"}``) or spell out our architecture fields; V2
checkpoints are transformers ``DepthAnythingForDepthEstimation`` (``model_type``
``depth_anything``). The core runs one graph ``model``: pixel_values → ``depth`` at the network
input size, plus ``confidence`` and ``intrinsics`` (DA3 any-view) or ``sky`` (DA3 mono /
metric).

Around it, shared by the torch and ONNX runtimes:

- Pre-processing: DA3 as its reference package does it (longest side to 504, sides to
  multiples of 14, ImageNet mean/std; :func:`preprocess_da3`); V2 as its checkpoint's
  ``preprocessor_config.json`` prescribes (:mod:`.v2`).
- Post-processing: DA3 mono / metric give sky pixels the 99th-percentile depth of the rest
  (the reference's sky rule, :func:`apply_sky_rule`, per image). It runs here rather than in
  the graph because it is discontinuous: a sky score within rounding of the 0.3 threshold
  flips a pixel between its depth and the fill value, so an export's parity is measured on
  the graph's raw depth (``ParityOptions`` in ``export.py``), and both runtimes then apply
  the same rule.
  The depth map is resized to the input image (DA3 bilinear, V2 bicubic as
  transformers' ``post_process_depth_estimation`` does); metric DA3 depth becomes metres by the
  reference rule ``focal * depth / 300`` with the focal length in *network-input* pixels; DA3
  any-view intrinsics are scaled from network-input to input-image pixels.

What the numbers mean: DA3 any-view and mono give relative depth (larger is farther, unknown
scale), DA3 metric gives metres, V2 gives relative inverse depth (disparity: larger is nearer).
Each result says so in ``kind``, ``units`` and ``relation``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from engines.base import Pipeline, Prepared, Task
from engines.errors import InvalidInputError
from engines.families.depth_anything.maps import depth_to_png, resize_depth, scale_intrinsics
from engines.families.depth_anything.options import DepthAnythingOptions
from engines.families.depth_anything.v2 import DptPreprocessing, is_v2_config
from engines.images import source_size
from engines.visualize import depth_panel, encode_png, requested

DA3_PROCESS_RES = 504
# Metric DA3 without the request's focal_px: a camera with this horizontal field of view.
DEFAULT_HORIZONTAL_FOV_DEG = 60.0


@dataclass(frozen=True)
class DepthNetwork:
    """What pre- and post-processing need to know about a loaded checkpoint.

    Attributes:
        architecture: ``da3`` (our network) or ``v2`` (transformers).
        metric: Metric output (DA3 metric: metres after the focal rule; V2 metric: metres).
        has_camera: DA3 any-view: predicts confidence and intrinsics.
        has_sky: DA3 mono / metric: predicts a sky score.
    """

    architecture: Literal["da3", "v2"]
    metric: bool = False
    has_camera: bool = False
    has_sky: bool = False

    @property
    def outputs(self) -> list[str]:
        """Names of the ``model`` graph's outputs."""
        names = ["depth"]
        if self.has_camera:
            names += ["confidence", "intrinsics"]
        if self.has_sky:
            names.append("sky")
        return names

    @property
    def relation(self) -> Literal["depth", "inverse"]:
        """``inverse`` where the network predicts disparity (relative V2), else ``depth``."""
        return "inverse" if self.architecture == "v2" and not self.metric else "depth"

    @property
    def focal_rule(self) -> bool:
        """Metres come from ``focal * depth / 300`` (DA3 metric), not from the network."""
        return self.architecture == "da3" and self.metric

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DepthNetwork:
        """Tell the network kind from a checkpoint's ``config.json`` dict.

        Raises:
            ValueError: Neither a DA3 nor a transformers Depth Anything config.
        """
        if is_v2_config(config):
            return cls("v2", metric=config.get("depth_estimation_type") == "metric")
        if "model_name" in config:
            from engines.families.depth_anything.da3.config import Da3Config

            da3 = Da3Config.from_json_dict(config)
            has_sky = da3.head_kind == "dpt" and da3.sky_head
            return cls("da3", metric=da3.is_metric, has_camera=da3.has_camera, has_sky=has_sky)
        raise ValueError(
            "config.json is neither a Depth Anything 3 checkpoint (it names no model_name) nor "
            "a transformers Depth Anything one (model_type is not 'depth_anything')"
        )


def read_network(path: Path) -> DepthNetwork:
    """The :class:`DepthNetwork` of a checkpoint directory."""
    return DepthNetwork.from_config(json.loads((path / "config.json").read_text()))


class DepthAnythingPipeline(Pipeline[DepthAnythingOptions]):
    """Depth Anything around a core with one graph ``model`` (see the module docstring)."""

    def __init__(
        self,
        core: Any,
        network: DepthNetwork,
        *,
        v2_preprocessing: DptPreprocessing | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        super().__init__(core, checkpoint_dir)
        self.network = network
        self.v2_preprocessing = v2_preprocessing

    def prepare(self, image: Image.Image, options: DepthAnythingOptions) -> Prepared:
        """Resize and normalise one image; images of equal network size share a forward."""
        if self.v2_preprocessing is not None:
            pixels = self.v2_preprocessing(image)
        else:
            from engines.families.depth_anything.da3 import preprocess_da3

            rgb = np.asarray(image.convert("RGB"))
            pixels = preprocess_da3(rgb, DA3_PROCESS_RES, source_size(image)).numpy()
        extra = {"image": image} if requested(options) else {}
        return Prepared({"pixel_values": pixels}, *source_size(image), extra)

    def decode_size(
        self, width: int, height: int, options: DepthAnythingOptions
    ) -> tuple[int, int] | None:
        """The network input size; None with a visualisation (drawn on the image itself)."""
        if requested(options):
            return None
        if self.v2_preprocessing is not None:
            return self.v2_preprocessing.output_size(width, height)
        from engines.families.depth_anything.da3 import da3_input_size

        return da3_input_size(width, height, DA3_PROCESS_RES)

    def forward(
        self, batch: Sequence[Prepared], options: DepthAnythingOptions
    ) -> list[dict[str, Any]]:
        """One forward for the batch; each image's outputs at the network input size."""
        pixels = np.stack([p.arrays["pixel_values"] for p in batch])
        out = self.core.run("model", {"pixel_values": pixels})
        return [{name: out[name][i] for name in self.network.outputs} for i in range(len(batch))]

    def postprocess(
        self, raw: dict[str, Any], prepared: Prepared, options: DepthAnythingOptions
    ) -> dict[str, Any]:
        """Metric conversion, resize to the input image, encoding, camera fields."""
        network = self.network
        depth = np.asarray(raw["depth"], np.float32)
        net_h, net_w = depth.shape
        # Only export parity turns the rule off (``ParityOptions``; not a request field).
        if "sky" in raw and getattr(options, "sky_rule", True):
            depth = sky_rule(depth, np.asarray(raw["sky"], np.float32))
        width, height = prepared.width, prepared.height
        result: dict[str, Any] = {
            "width": width,
            "height": height,
            "kind": "metric" if network.metric else "relative",
            "units": "m" if network.metric else None,
            "relation": network.relation,
        }
        if network.focal_rule:
            focal_px, source = (
                (float(options.focal_px), "request")
                if options.focal_px is not None
                else (default_focal_px(width), "default_fov")
            )
            depth = metric_from_focal(depth, focal_px, (width, height), (net_w, net_h))
            result["focal_px"] = focal_px
            result["focal_source"] = source
        mode = "bicubic" if network.architecture == "v2" else "bilinear"
        resized = resize_depth(depth, width, height, mode)
        low, high = float(resized.min()), float(resized.max())
        result["min"], result["max"] = low, high
        result["depth"] = (
            depth_to_png(resized, low, high) if options.output_format == "png" else resized
        )
        if requested(options):
            panel = depth_panel(
                prepared.extra["image"], resized, near_is_high=network.relation == "inverse"
            )
            result["visualization"] = encode_png(panel)
        if "confidence" in raw:
            confidence = np.asarray(raw["confidence"], np.float64)
            result["confidence"] = {
                "mean": float(confidence.mean()),
                "min": float(confidence.min()),
                "max": float(confidence.max()),
            }
        if "intrinsics" in raw:
            result["intrinsics"] = scale_intrinsics(
                np.asarray(raw["intrinsics"], np.float64), (width, height), (net_w, net_h)
            ).tolist()
        if "sky" in raw:
            from engines.families.depth_anything.da3.postprocess import SKY_THRESHOLD

            result["sky_fraction"] = float(np.mean(np.asarray(raw["sky"]) >= SKY_THRESHOLD))
        return result

    def warmup(self) -> None:
        """One small forward (8 x 8 patches), so the first request pays no lazy set-up."""
        self.core.run("model", {"pixel_values": np.zeros((1, 3, 112, 112), np.float32)})

    def task(self, name: str) -> Task[Any]:
        """``scene``: several views in one forward (any-view DA3 checkpoints).

        Raises:
            InvalidInputError: Another task, or a checkpoint that predicts no cameras.
        """
        if name != "scene":
            return super().task(name)
        if not self.network.has_camera:
            raise InvalidInputError(
                "This checkpoint predicts no cameras (a mono, metric or V2 model), so it "
                "cannot reconstruct a scene; use an any-view variant (small, base, large, giant)."
            )
        from engines.families.depth_anything.scene import SceneTask

        return SceneTask(self.core)


def sky_rule(depth: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """The reference's sky rule on one (h, w) map (:func:`apply_sky_rule`)."""
    import torch

    from engines.families.depth_anything.da3 import apply_sky_rule

    with torch.inference_mode():
        ruled = apply_sky_rule(torch.from_numpy(depth)[None], torch.from_numpy(sky)[None])
    return ruled[0].numpy()


def default_focal_px(width: int, fov_deg: float = DEFAULT_HORIZONTAL_FOV_DEG) -> float:
    """Focal length in pixels of an image ``width`` wide seen with a horizontal ``fov_deg``."""
    return (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)


def metric_from_focal(
    depth: np.ndarray,
    focal_px: float,
    image_size: tuple[int, int],
    network_size: tuple[int, int],
) -> np.ndarray:
    """Metres from DA3 metric output: ``focal * depth / 300``, focal in network-input pixels.

    The network saw the image resized from ``image_size`` (W, H) to ``network_size`` (w, h):
    a focal of ``focal_px`` input pixels is ``focal_px * w / W`` pixels horizontally and
    ``focal_px * h / H`` vertically there (equal but for the rounding of each side to a
    multiple of 14); the reference averages fx and fy, so we do too.
    """
    import torch

    from engines.families.depth_anything.da3 import metric_depth_m

    (width, height), (net_w, net_h) = image_size, network_size
    focal_network = focal_px * (net_w / width + net_h / height) / 2.0
    return metric_depth_m(torch.from_numpy(depth), focal_network).numpy()
