"""Tiny random DA3 checkpoints in the official layout, for tests and local development."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engines.families.depth_anything.da3.checkpoint import save_da3
from engines.families.depth_anything.da3.config import Da3Config
from engines.families.depth_anything.da3.network import Da3Network

TINY_SEED = 0

# Same wiring as da3-small (anyview) and da3mono/metric-large, at a fraction of the width.
TINY_CONFIGS: dict[str, Da3Config] = {
    "anyview": Da3Config(
        model_name="da3-tiny-anyview",
        embed_dim=32,
        depth=6,
        num_heads=2,
        out_layers=(2, 3, 4, 5),
        head_kind="dualdpt",
        head_features=16,
        head_out_channels=(8, 16, 24, 32),
        alt_start=2,
        qknorm_start=2,
        rope_start=2,
        cat_token=True,
        has_camera=True,
        camera_encoder_depth=1,
        camera_encoder_heads=2,
        aux_out1_convs=1,
    ),
    **{
        kind: Da3Config(
            model_name=f"da3-tiny-{kind}",
            embed_dim=32,
            depth=4,
            num_heads=2,
            out_layers=(0, 1, 2, 3),
            head_kind="dpt",
            head_features=16,
            head_out_channels=(8, 16, 24, 32),
            is_metric=kind == "metric",
        )
        for kind in ("mono", "metric")
    },
}


@torch.no_grad()
def randomize(network: Da3Network, seed: int) -> None:
    """Deterministic weights that keep activations in a sane range (no global RNG used)."""
    generator = torch.Generator().manual_seed(seed)
    transposed = {
        f"{name}.weight"
        for name, module in network.named_modules()
        if isinstance(module, torch.nn.ConvTranspose2d)
    }
    for name, param in network.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith("gamma"):  # layer scale
            value = 0.1 + 0.02 * noise
        elif name.endswith(("pos_embed", "cls_token", "camera_token")):
            value = 0.5 * noise
        elif param.ndim == 1:  # norm weights around 1, biases around 0
            value = (1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.05 * noise
        else:  # fan-in scaled; a transposed conv's input channels come first
            fan_in = param.shape[0] if name in transposed else math.prod(param.shape[1:])
            value = noise / math.sqrt(fan_in)
        param.copy_(value)


def write_tiny_da3(directory: Path, preset_kind: str, *, seed: int = TINY_SEED) -> Path:
    """Write a tiny random DA3 checkpoint (``config.json`` + ``model.safetensors``).

    Args:
        directory: Where to write; created if needed.
        preset_kind: ``anyview`` (da3-small wiring), ``mono`` or ``metric``.
        seed: Seed of the weights; the same seed and kind write the same bytes.

    Returns:
        ``directory``.

    Raises:
        ValueError: Unknown ``preset_kind``.

    """
    if preset_kind not in TINY_CONFIGS:
        raise ValueError(f"Unknown tiny DA3 kind {preset_kind!r}; use one of {list(TINY_CONFIGS)}")
    network = Da3Network(TINY_CONFIGS[preset_kind])
    randomize(network, seed + list(TINY_CONFIGS).index(preset_kind))  # kinds differ
    return save_da3(network, Path(directory))
