"""Tiny random Depth Anything checkpoints (DA3 any-view, mono, metric and V2), for tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engines.families.depth_anything.da3.tiny import write_tiny_da3
from engines.families.depth_anything.v2 import PREPROCESSOR_FILE, RELEASED_PREPROCESSING


def write_tiny(directory: Path) -> dict[str, str]:
    """Tiny random DA3 any-view (default), mono and metric, and a tiny V2 checkpoint."""
    written = {}
    kinds = {"tiny": "anyview", "tiny-mono": "mono", "tiny-metric": "metric"}
    for variant, kind in kinds.items():
        target = directory / f"depth-anything-{variant}"
        write_tiny_da3(target, kind)
        written[variant] = target.name
    target = directory / "depth-anything-tiny-v2"
    write_tiny_v2(target)
    written["tiny-v2"] = target.name
    return written


def _randomize_v2(model: Any, seed: int) -> None:
    """Fan-in scaled random weights, and a positive bias before the final ReLU.

    The default init (std 0.02 everywhere) leaves the tiny network's disparity around 1e-7;
    these keep it near 1, with most pixels above the ReLU's zero.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    transposed = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ConvTranspose2d)
    }
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("position_embeddings", "cls_token", "mask_token")):
                value = 0.5 * noise
            elif "layernorm" in name or "norm" in name.split(".")[-2]:
                value = (1.0 if name.endswith("weight") else 0.0) + 0.05 * noise
            elif param.ndim == 1:
                value = 0.1 + 0.02 * noise if "lambda" in name else 0.05 * noise
            else:  # fan-in scaled; a transposed conv's input channels come first
                fan_in = param.shape[0] if name in transposed else math.prod(param.shape[1:])
                value = noise / math.sqrt(fan_in)
            param.copy_(value)
        model.head.conv3.bias.fill_(1.0)


def write_tiny_v2(directory: Path, seed: int = 0) -> Path:
    """A tiny random ``DepthAnythingForDepthEstimation`` in the released ``-hf`` layout.

    Same wiring as V2-Small (DINOv2 backbone with patch 14 and a 518 position grid, four
    backbone stages into a DPT neck and the relative-depth head) at a fraction of the width.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=518,
        out_indices=[1, 2, 3, 4],  # type: ignore[call-arg]  # set through the backbone mixin
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    _randomize_v2(model, seed)
    model.save_pretrained(directory)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(RELEASED_PREPROCESSING, indent=2))
    return directory
