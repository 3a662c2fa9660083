"""DINOv3 pre-processing, forward and post-processing (shared by the torch and ONNX cores).

Pre-processing reproduces what the checkpoint's ``preprocessor_config.json`` prescribes, in
the order the reference processor applies it: rescale (1/255) → resize (antialiased, on float)
→ normalise. The ConvNeXt variants have no CLS or register tokens: ``cls`` pooling gives their
pooled output (layer-normed global average), ``mean`` the mean of their final feature map, and
patch features are that feature map on its (H/32, W/32) grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engines.base import Pipeline, Prepared
from engines.families.dinov3.options import Dinov3Options
from engines.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    released_preprocessing,
    resize_normalize,
    source_size,
)
from engines.visualize import encode_png, features_panel, requested

# What the released checkpoints' preprocessor_config.json says (used if a directory lacks one).
DEFAULT_PREPROCESSING = released_preprocessing(
    {"height": 224, "width": 224}, IMAGENET_MEAN, IMAGENET_STD
)


@dataclass(frozen=True)
class Preprocessing:
    """The resize/rescale/normalise recipe of one checkpoint."""

    size: tuple[int, int] | None
    shortest_edge: int | None
    resample: int
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    # Resize the 8-bit pixels (engines.images.resize_normalize's ``uint8``) instead of the
    # rescaled float ones as DINOv3's processor does: LoadRequest.uint8_resize.
    uint8_resize: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessing:
        """Read a ``preprocessor_config.json`` dict (missing keys take the released values)."""
        merged = {**DEFAULT_PREPROCESSING, **config}
        size = merged.get("size") or {}
        hw = (int(size["height"]), int(size["width"])) if "height" in size else None
        return cls(
            size=hw if merged.get("do_resize", True) else None,
            shortest_edge=int(size["shortest_edge"]) if "shortest_edge" in size else None,
            resample=int(merged.get("resample", 2)),
            rescale_factor=float(merged["rescale_factor"]) if merged.get("do_rescale") else None,
            mean=tuple(merged["image_mean"]) if merged.get("do_normalize") else None,
            std=tuple(merged["image_std"]) if merged.get("do_normalize") else None,
        )

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the image is resized to."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is not None:
            scale = self.shortest_edge / min(width, height)
            return round(height * scale), round(width * scale)
        return height, width

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Pre-process an RGB image into a (3, H, W) float32 array."""
        size = self.output_size(*source_size(image))
        mode = "bicubic" if self.resample == 3 else "bilinear"
        # Bilinear only: a bicubic resize overshoots, and 8 bits clip it (up to ~19 grey levels
        # off the float result at edges), far from the one level the setting promises.
        uint8 = self.uint8_resize and mode == "bilinear"
        return resize_normalize(
            image, size, mode, self.rescale_factor, self.mean, self.std, uint8=uint8
        )


class Dinov3Pipeline(Pipeline[Dinov3Options]):
    """DINOv3 around a core with one graph ``model``.

    The graph maps ``pixel_values`` to ``last_hidden_state`` and ``pooler_output``.
    """

    def __init__(
        self,
        core: Any,
        preprocessing: Preprocessing,
        *,
        convnext: bool,
        num_register_tokens: int,
        patch_size: int,
        checkpoint_dir: Path | None = None,
    ) -> None:
        super().__init__(core, checkpoint_dir)
        self.preprocessing = preprocessing
        self.convnext = convnext
        # Tokens before the patch grid in last_hidden_state: CLS + registers, or the pooled token.
        self.prefix_tokens = 1 if convnext else 1 + num_register_tokens
        self.stride = 32 if convnext else patch_size

    def prepare(self, image: Image.Image, options: Dinov3Options) -> Prepared:
        """Resize, rescale and normalise one image."""
        pixels = self.preprocessing(image)
        extra = {"image": image} if requested(options) else {}
        return Prepared({"pixel_values": pixels}, *source_size(image), extra)

    def decode_size(
        self, width: int, height: int, options: Dinov3Options
    ) -> tuple[int, int] | None:
        """The network input size; None with a visualisation (drawn on the image itself)."""
        if requested(options):
            return None
        out_height, out_width = self.preprocessing.output_size(width, height)
        return out_width, out_height

    def forward(self, batch: Sequence[Prepared], options: Dinov3Options) -> list[dict[str, Any]]:
        """One forward for the batch; keeps only what the options ask for."""
        pixels = np.stack([p.arrays["pixel_values"] for p in batch])
        out = self.core.run("model", {"pixel_values": pixels})
        hidden, pooled = out["last_hidden_state"], out["pooler_output"]
        _, _, height, width = pixels.shape
        grid = (height // self.stride, width // self.stride)
        patches = hidden[:, self.prefix_tokens :]
        raws = []
        for i in range(len(batch)):
            raw: dict[str, Any] = {"grid": grid}
            if options.pooling == "cls":
                raw["embedding"] = pooled[i]
            elif options.pooling == "mean":
                raw["embedding"] = patches[i].mean(axis=0)
            if options.return_patch_features:
                raw["patches"] = patches[i]
            if requested(options):
                raw["visualized"] = patches[i]
            raws.append(raw)
        return raws

    def postprocess(
        self, raw: dict[str, Any], prepared: Prepared, options: Dinov3Options
    ) -> dict[str, Any]:
        """Normalise the embedding if asked and lay the patch features out on their grid."""
        embedding = raw.get("embedding")
        if embedding is not None and options.normalize:
            embedding = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        patches = raw.get("patches")
        dim = int(patches.shape[-1] if patches is not None else self._dim(embedding))
        result = {
            "dim": dim,
            "embedding": None if embedding is None else embedding.astype(np.float32).tolist(),
            "patch_features": None
            if patches is None
            else {
                "grid": list(raw["grid"]),
                "dim": dim,
                "data": np.ascontiguousarray(patches, np.float32),
            },
        }
        if requested(options):
            panel = features_panel(prepared.extra["image"], raw["visualized"], raw["grid"])
            result["visualization"] = encode_png(panel)
        return result

    def _dim(self, embedding: np.ndarray | None) -> int:
        return 0 if embedding is None else embedding.shape[-1]

    def warmup(self) -> None:
        """One forward on a blank image."""
        blank = Image.new("RGB", (64, 64))
        options = Dinov3Options(normalize=False)
        self.forward([self.prepare(blank, options)], options)


def pipeline_for(
    core: Any, path: Path, config: Any, *, uint8_resize: bool = False
) -> Dinov3Pipeline:
    """The pipeline around ``core`` for the checkpoint at ``path`` (its transformers config).

    ``uint8_resize``: :attr:`Preprocessing.uint8_resize`.
    """
    return Dinov3Pipeline(
        core,
        replace(load_preprocessing(path), uint8_resize=uint8_resize),
        convnext=config.model_type == "dinov3_convnext",
        num_register_tokens=getattr(config, "num_register_tokens", 0),
        patch_size=getattr(config, "patch_size", 16),
        checkpoint_dir=path,
    )


def load_preprocessing(path: Path) -> Preprocessing:
    """The recipe in ``path/preprocessor_config.json``, or the released one if absent."""
    file = path / "preprocessor_config.json"
    config = json.loads(file.read_text()) if file.exists() else {}
    return Preprocessing.from_config(config)
