"""Tiny random DINOv3 checkpoints (ViT and ConvNeXt) in the released layout, for tests."""

from __future__ import annotations

import json
from pathlib import Path

from engines.families.dinov3.pipeline import DEFAULT_PREPROCESSING


def write_tiny(directory: Path) -> dict[str, str]:
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
