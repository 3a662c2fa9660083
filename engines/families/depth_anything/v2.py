"""Depth Anything V2 through transformers: the DPT pre-processing recipe and a forward.

The released ``-hf`` checkpoints' ``preprocessor_config.json`` asks transformers' DPT image
processor to resize with the aspect ratio kept, scaling "as little as possible" towards
518 × 518 (so the side that needs the smaller change lands on 518 and the other follows), each
side rounded to the nearest multiple of 14; Pillow bicubic on the uint8 image; then 1/255 and
ImageNet mean/std. :class:`DptPreprocessing` does exactly that with Pillow and numpy, without
transformers' processor classes (whose default backend needs torchvision).

The network predicts relative *inverse* depth (disparity: larger is nearer) at the size of its
input; transformers' ``post_process_depth_estimation`` resizes it bicubically to the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engines.images import image_to_chw_float, source_size

PREPROCESSOR_FILE = "preprocessor_config.json"
# What the released Depth-Anything-V2-*-hf checkpoints' preprocessor_config.json says.
RELEASED_PREPROCESSING: dict[str, Any] = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 518, "width": 518},
    "size_divisor": None,
}
_PIL_FILTERS = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}


def _constrain_to_multiple(value: float, multiple: int) -> int:
    """The nearest multiple, as transformers' ``constrain_to_multiple_of`` without bounds.

    Python's ``round`` (halves to even) as there, and at least one ``multiple`` so that a
    sliver of an image still gives one patch.
    """
    return max(multiple, round(value / multiple) * multiple)


@dataclass(frozen=True)
class DptPreprocessing:
    """The resize / rescale / normalise recipe of one V2 checkpoint."""

    size: tuple[int, int] | None  # (height, width); None: no resize
    keep_aspect_ratio: bool
    multiple: int
    resample: int
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DptPreprocessing:
        """Read a ``preprocessor_config.json`` dict (missing keys take the released values).

        Raises:
            ValueError: The config asks for padding (``do_pad`` with a ``size_divisor``),
                which the released checkpoints never do and this recipe does not implement.
        """
        merged = {**RELEASED_PREPROCESSING, **config}
        if merged.get("do_pad") and merged.get("size_divisor"):
            raise ValueError("DPT pre-processing with padding (do_pad) is not supported")
        size = merged.get("size") or {}
        return cls(
            size=(int(size["height"]), int(size["width"])) if merged.get("do_resize") else None,
            keep_aspect_ratio=bool(merged.get("keep_aspect_ratio")),
            multiple=int(merged.get("ensure_multiple_of") or 1),
            resample=int(merged.get("resample", 3)),
            rescale_factor=float(merged["rescale_factor"]) if merged.get("do_rescale") else None,
            mean=tuple(merged["image_mean"]) if merged.get("do_normalize") else None,
            std=tuple(merged["image_std"]) if merged.get("do_normalize") else None,
        )

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the network input for an image of this size."""
        if self.size is None:
            return width, height
        scale_h, scale_w = self.size[0] / height, self.size[1] / width
        if self.keep_aspect_ratio:  # scale as little as possible
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return (
            _constrain_to_multiple(scale_w * width, self.multiple),
            _constrain_to_multiple(scale_h * height, self.multiple),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Pre-process an RGB image into a (3, h, w) float32 array."""
        size = self.output_size(*source_size(image))
        image = image.convert("RGB")
        if size != image.size:
            image = image.resize(size, _PIL_FILTERS.get(self.resample, Image.Resampling.BICUBIC))
        # The same float32 operations in the same order, channel-first from the first pass on.
        pixels = image_to_chw_float(image, self.rescale_factor)
        if self.mean is not None and self.std is not None:
            pixels -= np.asarray(self.mean, np.float32)[:, None, None]
            pixels /= np.asarray(self.std, np.float32)[:, None, None]
        return pixels


def load_dpt_preprocessing(path: Path) -> DptPreprocessing:
    """The recipe in ``path/preprocessor_config.json``, or the released one if absent."""
    file = path / PREPROCESSOR_FILE
    return DptPreprocessing.from_config(json.loads(file.read_text()) if file.exists() else {})


def is_v2_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` dict describes a transformers Depth Anything (V1/V2) model."""
    return config.get("model_type") == "depth_anything"


def v2_forward(model: Any, pixel_values: Any) -> Any:
    """``DepthAnythingForDepthEstimation(pixel_values).predicted_depth``, traceable.

    The same modules in the same order as transformers' forward, except that the head's
    upsampling takes the input's height and width as they are instead of through ``int()``,
    which the legacy ONNX exporter would freeze at the example size.
    """
    import torch.nn.functional as F

    features = model.backbone.forward_with_filtered_kwargs(pixel_values).feature_maps
    height, width = pixel_values.shape[-2], pixel_values.shape[-1]
    patch = model.config.patch_size
    patch_h, patch_w = height // patch, width // patch
    hidden = model.neck(features, patch_h, patch_w)[model.head.head_in_index]
    head = model.head
    depth = F.interpolate(
        head.conv1(hidden), (patch_h * patch, patch_w * patch), mode="bilinear", align_corners=True
    )
    depth = head.conv3(head.activation1(head.conv2(depth)))
    return (head.activation2(depth) * head.max_depth).squeeze(dim=1)
