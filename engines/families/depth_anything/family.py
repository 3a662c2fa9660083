"""Depth Anything's variants and how to load them (DA3 on our network, V2 on transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.base import Family, LoadRequest, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.families.depth_anything.compare import depth_metrics
from engines.families.depth_anything.options import DepthAnythingOptions
from engines.families.depth_anything.pipeline import (
    DepthAnythingPipeline,
    DepthNetwork,
    read_network,
)
from engines.families.depth_anything.v2 import load_dpt_preprocessing, v2_forward

APACHE = "Apache-2.0"
NON_COMMERCIAL = "CC BY-NC 4.0 (non-commercial use only)"
VARIANTS = {
    spec.name: spec
    for spec in (
        VariantSpec("small", "depth-anything/DA3-SMALL", APACHE),
        VariantSpec("base", "depth-anything/DA3-BASE", APACHE),
        VariantSpec("large", "depth-anything/DA3-LARGE-1.1", NON_COMMERCIAL),
        VariantSpec("giant", "depth-anything/DA3-GIANT-1.1", NON_COMMERCIAL),
        VariantSpec("mono-large", "depth-anything/DA3MONO-LARGE", APACHE),
        VariantSpec("metric-large", "depth-anything/DA3METRIC-LARGE", APACHE),
        VariantSpec("v2-small", "depth-anything/Depth-Anything-V2-Small-hf", APACHE),
        VariantSpec("v2-base", "depth-anything/Depth-Anything-V2-Base-hf", NON_COMMERCIAL),
        VariantSpec("v2-large", "depth-anything/Depth-Anything-V2-Large-hf", NON_COMMERCIAL),
    )
}


class DepthAnythingFamily(Family):
    """Depth Anything 3 (any-view, mono, metric) and Depth Anything V2 checkpoints."""

    name = "depth-anything"
    aliases = ("depth_anything",)
    default_variant = "small"
    variants = VARIANTS
    options_type = DepthAnythingOptions
    # bf16 against fp32 on the shipped photos (CUDA measured 2.1e-3 depth relative L2).
    precision_gates = {
        "depth_rel_l2_max": ("<=", 1e-2),
        "intrinsics_rel_max": ("<=", 1e-2),
        "confidence_mean_rel_max": ("<=", 2e-2),
    }

    def precision_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Worst relative error of depth, intrinsics and mean confidence of the two runs."""
        return depth_metrics(reference, candidate)

    def load_torch(self, request: LoadRequest) -> DepthAnythingPipeline:
        """Load a DA3 checkpoint with our network, or a V2 one with transformers.

        Raises:
            ValueError: The checkpoint is neither kind.
        """
        from engines.torch_runtime import torch_checkpoint

        path = torch_checkpoint(request, ["*.json", "*.safetensors"])
        network = read_network(path)
        if network.architecture == "v2":
            core = _v2_core(path, request)
            return DepthAnythingPipeline(
                core, network, v2_preprocessing=load_dpt_preprocessing(path), checkpoint_dir=path
            )
        return DepthAnythingPipeline(
            _da3_core(path, request, network), network, checkpoint_dir=path
        )

    def load_onnx(self, request: LoadRequest, core: Any) -> DepthAnythingPipeline:
        """The pipeline around exported graphs; the checkpoint's JSON files give the rest."""
        path = resolve_checkpoint(request.spec.source, request.hf_token, allow_patterns=["*.json"])
        network = read_network(path)
        preprocessing = load_dpt_preprocessing(path) if network.architecture == "v2" else None
        return DepthAnythingPipeline(
            core, network, v2_preprocessing=preprocessing, checkpoint_dir=path
        )


def _da3_core(path: Path, request: LoadRequest, network: DepthNetwork) -> Any:
    import torch

    from engines.families.depth_anything.da3 import load_da3
    from engines.torch_runtime import DTYPES, TorchCore

    model, _ = load_da3(
        path, device=request.device, dtype=DTYPES[request.dtype], token=request.hf_token
    )
    model.sky_rule = False  # applied in post-processing, for both runtimes
    names = network.outputs

    def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(pixel_values)._asdict()
        return {name: out[name] for name in names}

    return TorchCore(model, {"model": run_model}, request.device, request.dtype)


def _v2_core(path: Path, request: LoadRequest) -> Any:
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from engines.torch_runtime import DTYPES, TorchCore

    model = DepthAnythingForDepthEstimation.from_pretrained(path, dtype=DTYPES[request.dtype])
    # transformers types ``to`` through a decorator that mypy reads as an unbound function.
    model = model.to(request.device).eval()  # type: ignore[arg-type]

    def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": v2_forward(model, pixel_values)}

    return TorchCore(model, {"model": run_model}, request.device, request.dtype)
