"""DINOv3: image embeddings and patch features (ViT and ConvNeXt checkpoints).

Pre-processing reproduces what the checkpoint's ``preprocessor_config.json`` prescribes, in
the order the reference processor applies it: rescale (1/255) → resize (antialiased, on float)
→ normalise. The ConvNeXt variants have no CLS or register tokens: ``cls`` pooling gives their
pooled output (layer-normed global average), ``mean`` the mean of their final feature map, and
patch features are that feature map on its (H/32, W/32) grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from engines.base import Family, LoadRequest, OnnxGraph, Pipeline, Prepared, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.images import image_to_chw_float, resize_normalize

LICENSE = "DINOv3 License (gated)"
HUB = "facebook/dinov3-{}-pretrain-{}"
VARIANTS = {
    **{
        name: VariantSpec(name, HUB.format(name, "lvd1689m"), LICENSE)
        for name in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16")
    },
    **{
        f"convnext-{size}": VariantSpec(
            f"convnext-{size}", HUB.format(f"convnext-{size}", "lvd1689m"), LICENSE
        )
        for size in ("tiny", "small", "base", "large")
    },
    **{
        f"{name}-sat": VariantSpec(f"{name}-sat", HUB.format(name, "sat493m"), LICENSE)
        for name in ("vitl16", "vit7b16")
    },
}
# What the released checkpoints' preprocessor_config.json says (used if a directory lacks one).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


class Dinov3Options(Protocol):
    """The request fields this family reads."""

    pooling: Literal["cls", "mean", "none"]
    normalize: bool
    return_patch_features: bool


@dataclass(frozen=True)
class Preprocessing:
    """The resize/rescale/normalise recipe of one checkpoint."""

    size: tuple[int, int] | None
    shortest_edge: int | None
    resample: int
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

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
        pixels = image_to_chw_float(image, self.rescale_factor)
        size = self.output_size(image.width, image.height)
        mode = "bicubic" if self.resample == 3 else "bilinear"
        return resize_normalize(pixels, size, mode, self.mean, self.std)


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
        return Prepared({"pixel_values": pixels}, image.width, image.height)

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
        return {
            "dim": dim,
            "embedding": None if embedding is None else embedding.astype(np.float32).tolist(),
            "patch_features": None
            if patches is None
            else {"grid": list(raw["grid"]), "dim": dim, "data": patches.tolist()},
        }

    def _dim(self, embedding: np.ndarray | None) -> int:
        return 0 if embedding is None else embedding.shape[-1]

    def warmup(self) -> None:
        """One forward on a blank image."""
        blank = Image.new("RGB", (64, 64))
        options = _WarmupOptions()
        self.forward([self.prepare(blank, options)], options)


@dataclass
class _WarmupOptions:
    pooling: Literal["cls", "mean", "none"] = "cls"
    normalize: bool = False
    return_patch_features: bool = False


class Dinov3Family(Family):
    """DINOv3 ViT and ConvNeXt checkpoints through transformers."""

    name = "dinov3"
    default_variant = "vits16"
    variants = VARIANTS

    def load_torch(self, request: LoadRequest) -> Dinov3Pipeline:
        """Load with transformers' ``DINOv3ViTModel`` / ``DINOv3ConvNextModel``."""
        import torch
        from transformers import AutoConfig, DINOv3ConvNextModel, DINOv3ViTModel

        from engines.torch_runtime import DTYPES, TorchCore, set_torch_threads

        set_torch_threads(request.torch_threads)
        path = resolve_checkpoint(
            request.spec.source,
            request.hf_token,
            allow_patterns=["*.json", "*.safetensors"],
        )
        config = AutoConfig.from_pretrained(path)
        convnext = config.model_type == "dinov3_convnext"
        cls = DINOv3ConvNextModel if convnext else DINOv3ViTModel
        kwargs: dict[str, Any] = {"dtype": DTYPES[request.dtype]}
        if not convnext:
            kwargs["attn_implementation"] = "sdpa"
        model = cls.from_pretrained(path, **kwargs).to(request.device).eval()

        def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            out = model(pixel_values=pixel_values)
            return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}

        core = TorchCore(model, {"model": run_model}, request.device, request.dtype)
        return _pipeline(core, path, config)

    # Gated: the embeddings and the patch features on average. The worst single patch is
    # recorded too: uniform image regions give near-constant tokens whose final LayerNorm
    # amplifies float32 rounding, so it is informative rather than a gate.
    parity_gates = {
        "embedding_cosine_min": (">=", 0.9999),
        "patch_cosine_mean_min": (">=", 0.9999),
        "patch_cosine_min": (">=", 0.99),
    }

    def load_onnx(self, request: LoadRequest, core: Any) -> Dinov3Pipeline:
        """The pipeline around exported graphs; the checkpoint gives config and pre-processing."""
        from transformers import AutoConfig

        path = resolve_checkpoint(request.spec.source, request.hf_token, allow_patterns=["*.json"])
        return _pipeline(core, path, AutoConfig.from_pretrained(path))

    def onnx_graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """One graph ``model``; batch and (for any-size inputs) spatial axes dynamic."""
        assert isinstance(pipeline, Dinov3Pipeline)
        height, width = pipeline.preprocessing.output_size(224, 224)
        example = np.random.default_rng(0).standard_normal((2, 3, height, width), np.float32)
        return [
            OnnxGraph(
                name="model",
                inputs={"pixel_values": example},
                outputs=["last_hidden_state", "pooler_output"],
                dynamic_axes={
                    "pixel_values": {0: "batch", 2: "height", 3: "width"},
                    "last_hidden_state": {0: "batch", 1: "tokens"},
                    "pooler_output": {0: "batch"},
                },
            )
        ]

    def parity_options(self) -> list[Any]:
        """CLS embeddings and patch features."""
        return [_WarmupOptions(pooling="cls", return_patch_features=True)]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Smallest cosine similarity of embeddings and of patch features."""
        embedding, patch_mean, patch_min = [], [], []
        for ref, cand in zip(reference, candidate, strict=True):
            embedding.append(_cosine(ref["embedding"], cand["embedding"]))
            ref_p, cand_p = ref["patch_features"]["data"], cand["patch_features"]["data"]
            cosines = [_cosine(a, b) for a, b in zip(ref_p, cand_p, strict=True)]
            patch_mean.append(float(np.mean(cosines)))
            patch_min.append(min(cosines))
        return {
            "embedding_cosine_min": min(embedding),
            "patch_cosine_mean_min": min(patch_mean),
            "patch_cosine_min": min(patch_min),
        }

    def write_tiny(self, directory: Path) -> dict[str, str]:
        """Tiny random ViT (default) and ConvNeXt checkpoints in the released layout."""
        import torch
        from transformers import (
            DINOv3ConvNextConfig,
            DINOv3ConvNextModel,
            DINOv3ViTConfig,
            DINOv3ViTModel,
        )

        torch.manual_seed(0)
        vit = DINOv3ViTModel(
            DINOv3ViTConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                patch_size=16,
                num_register_tokens=4,
                image_size=64,
            )
        )
        convnext = DINOv3ConvNextModel(
            DINOv3ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
        )
        written = {}
        for variant, model in (("tiny", vit), ("tiny-convnext", convnext)):
            target = directory / f"dinov3-{variant}"
            model.save_pretrained(target)
            processor = {
                **DEFAULT_PREPROCESSING,
                "image_processor_type": "DINOv3ViTImageProcessorFast",
            }
            (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
            written[variant] = target.name
        return written


def _pipeline(core: Any, path: Path, config: Any) -> Dinov3Pipeline:
    return Dinov3Pipeline(
        core,
        load_preprocessing(path),
        convnext=config.model_type == "dinov3_convnext",
        num_register_tokens=getattr(config, "num_register_tokens", 0),
        patch_size=getattr(config, "patch_size", 16),
        checkpoint_dir=path,
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30))


def load_preprocessing(path: Path) -> Preprocessing:
    """The recipe in ``path/preprocessor_config.json``, or the released one if absent."""
    file = path / "preprocessor_config.json"
    config = json.loads(file.read_text()) if file.exists() else {}
    return Preprocessing.from_config(config)
