"""Depth Anything's variants and how to load them (DA3 on our network, V2 on transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.base import Family, LoadRequest, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.errors import InvalidInputError
from engines.families.depth_anything.compare import depth_metrics
from engines.families.depth_anything.options import DepthAnythingOptions, DepthSceneOptions
from engines.families.depth_anything.pipeline import (
    DepthAnythingPipeline,
    DepthNetwork,
    read_network,
)
from engines.families.depth_anything.scene import check_scene_budget
from engines.families.depth_anything.v2 import load_dpt_preprocessing, v2_forward

# The ``scene`` graph's outputs (any-view DA3): per view, at the network input size.
SCENE_OUTPUTS = ("depth", "confidence", "intrinsics", "extrinsics")

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

ANY_VIEW = ("small", "base", "large", "giant")


class DepthAnythingFamily(Family):
    """Depth Anything 3 (any-view, mono, metric) and Depth Anything V2 checkpoints."""

    name = "depth-anything"
    aliases = ("depth_anything",)
    default_variant = "small"
    variants = VARIANTS
    options_type = DepthAnythingOptions
    tasks = {"scene": DepthSceneOptions}
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

    def check_task(
        self, task: str, images: int, options: Any, device_kind: str, budget: float | None
    ) -> None:
        """A scene's views against the device's view budget (413 beyond it)."""
        if task == "scene" and budget is not None:
            check_scene_budget(images, options, device_kind, budget)

    def check_options(self, spec: VariantSpec, hf_token: str | None, options: Any) -> None:
        """A scene needs an any-view DA3 checkpoint (read from its config.json).

        Raises:
            InvalidInputError: A scene asked of a mono, metric or V2 checkpoint.
        """
        if not isinstance(options, DepthSceneOptions):
            return
        path = resolve_checkpoint(spec.source, hf_token, allow_patterns=["*.json"])
        if not read_network(path).has_camera:
            raise InvalidInputError(
                f"Variant {spec.name} predicts no cameras, so it cannot reconstruct a scene; "
                f"use an any-view variant ({', '.join(ANY_VIEW)})."
            )

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

    from engines.families.depth_anything.da3 import REF_VIEW_STRATEGIES, SceneGraph, load_da3
    from engines.torch_runtime import DTYPES, TorchCore, use_channels_last

    model, _ = load_da3(
        path, device=request.device, dtype=DTYPES[request.dtype], token=request.hf_token
    )
    model.sky_rule = False  # applied in post-processing, for both runtimes
    if request.device == "cpu":  # the DPT heads' convolutions in oneDNN's own layout
        use_channels_last(model)
    names = network.outputs

    def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(pixel_values)._asdict()
        return {name: out[name] for name in names}

    graphs: dict[str, Any] = {"model": run_model}
    if network.has_camera:
        scene_graph = SceneGraph(model)

        def run_scene(
            pixel_values: torch.Tensor,
            given_extrinsics: torch.Tensor,
            given_intrinsics: torch.Tensor,
            has_cameras: torch.Tensor,
            ref_strategy: torch.Tensor,
        ) -> dict[str, torch.Tensor]:
            if torch.jit.is_tracing():  # export: one graph for every case
                outputs = scene_graph(
                    pixel_values, given_extrinsics, given_intrinsics, has_cameras, ref_strategy
                )
                return dict(zip(SCENE_OUTPUTS, outputs, strict=True))
            given = bool(has_cameras)  # eager: no camera encoder without cameras
            out = model.forward_scene(
                pixel_values,
                given_extrinsics if given else None,
                given_intrinsics if given else None,
                ref_view_strategy=REF_VIEW_STRATEGIES[int(ref_strategy)],
            )._asdict()
            return {name: out[name] for name in SCENE_OUTPUTS}

        graphs["scene"] = run_scene
    return TorchCore(
        model,
        graphs,
        request.device,
        request.dtype,
        float32_inputs=("given_extrinsics", "given_intrinsics"),
    )


def _v2_core(path: Path, request: LoadRequest) -> Any:
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from engines.attention import use_blocked_attention
    from engines.torch_runtime import DTYPES, TorchCore, use_channels_last

    model = DepthAnythingForDepthEstimation.from_pretrained(path, dtype=DTYPES[request.dtype])
    # transformers types ``to`` through a decorator that mypy reads as an unbound function.
    model = model.to(request.device).eval()  # type: ignore[arg-type]
    use_blocked_attention(model)  # bf16 on CPU: the backbone's attention in query blocks
    if request.device == "cpu":  # the DPT neck's convolutions and upsampling in NHWC
        use_channels_last(model)

    def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": v2_forward(model, pixel_values)}

    return TorchCore(model, {"model": run_model}, request.device, request.dtype)
