"""Reading and writing DA3 checkpoints in the official layout.

A checkpoint directory holds ``config.json`` (``{"model_name": "da3-small"}``, or explicit
architecture fields next to ``model_name``) and ``model.safetensors`` (every key prefixed
``model.``). Loading is strict, with two documented exceptions:

- Aliases: the any-view head shares one LayerNorm between its four ray-branch levels; the
  checkpoint stores it under one name and the others are missing. Any one alias is enough.
- Giant checkpoints carry a 3D-Gaussian head (``gs_head.``) that this network does not build;
  its weights are skipped when the config says it is there.

Anything else missing or unexpected is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from engines.families.depth_anything.da3.config import Da3Config
from engines.families.depth_anything.da3.network import Da3Network

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KEY_PREFIX = "model."
SKIPPED_GS_PREFIXES = ("gs_head.", "gs_adapter.")


def alias_groups(module: nn.Module) -> list[list[str]]:
    """Names under which one parameter appears more than once, each group sorted."""
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [sorted(group) for group in names.values() if len(group) > 1]


def to_network_state(state: dict[str, Tensor], network: Da3Network) -> dict[str, Tensor]:
    """Map an official state dict onto ``network``'s names, checking it strictly.

    Raises:
        ValueError: Keys without the ``model.`` prefix, missing / unexpected weights, or
            aliases of one shared weight that differ.

    """
    if bad := sorted(k for k in state if not k.startswith(KEY_PREFIX)):
        raise ValueError(f"Checkpoint keys lack the {KEY_PREFIX!r} prefix: {bad[:5]}")
    state = {k[len(KEY_PREFIX) :]: v for k, v in state.items()}
    if network.config.has_gs_head:
        state = {k: v for k, v in state.items() if not k.startswith(SKIPPED_GS_PREFIXES)}
    for group in alias_groups(network):
        present = [name for name in group if name in state]
        if any(not torch.equal(state[name], state[present[0]]) for name in present[1:]):
            raise ValueError(f"Checkpoint stores different values for one shared weight: {present}")
        for name in group:
            if present and name not in state:
                state[name] = state[present[0]]
    expected = set(network.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint does not match the {network.config.model_name!r} architecture: "
            f"{len(missing)} missing {missing[:8]}, {len(unexpected)} unexpected {unexpected[:8]}"
        )
    return state


def to_official_state(network: Da3Network) -> dict[str, Tensor]:
    """``network``'s weights under official names, each shared parameter stored once."""
    state = network.state_dict()
    for group in alias_groups(network):
        for alias in group[1:]:  # keep the first name, as safetensors' save_model does
            del state[alias]
    return {KEY_PREFIX + k: v.contiguous() for k, v in state.items()}


def read_config(directory: Path) -> Da3Config:
    """Read ``config.json`` of a checkpoint directory.

    Raises:
        FileNotFoundError: No ``config.json``.
        ValueError: Not a DA3 config (see :meth:`Da3Config.from_json_dict`).

    """
    return Da3Config.from_json_dict(json.loads((directory / CONFIG_FILE).read_text()))


def load_da3(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    token: str | None = None,
) -> tuple[Da3Network, Da3Config]:
    """Load a DA3 checkpoint from a local directory or a Hugging Face repo id.

    Args:
        source: Directory with ``config.json`` and ``model.safetensors``, or a repo id such as
            ``depth-anything/DA3-SMALL`` (only those two files are downloaded).
        device: Where to put the weights.
        dtype: Weight dtype.
        token: Hugging Face token for gated repos; defaults to ``HF_TOKEN``.

    Returns:
        The network in eval mode, and its config.

    Raises:
        engines.errors.NotFoundError: No such directory or repo.
        ValueError: The config or the weights do not describe a known DA3 architecture.

    """
    from safetensors.torch import load_file

    from engines.checkpoints import resolve_checkpoint

    directory = resolve_checkpoint(
        str(source),
        token=token or os.environ.get("HF_TOKEN"),
        allow_patterns=[CONFIG_FILE, WEIGHTS_FILE],
    )
    config = read_config(directory)
    # Built without memory or random init; load_state_dict(assign=True) supplies the tensors.
    with torch.device("meta"):
        network = Da3Network(config)
    state = to_network_state(load_file(directory / WEIGHTS_FILE), network)
    network.load_state_dict(state, strict=True, assign=True)
    return network.to(device=device, dtype=dtype).eval(), config


def save_da3(network: Da3Network, directory: Path, *, preset_only: bool = False) -> Path:
    """Write ``network`` in the official layout.

    Args:
        network: The network to save.
        directory: Created if needed.
        preset_only: Write ``{"model_name": ...}`` alone, as official checkpoints do (the name
            must then be a preset); otherwise write every architecture field too.

    Returns:
        ``directory``.

    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = network.config
    payload = {"model_name": config.model_name} if preset_only else config.to_json_dict()
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    save_file(to_official_state(network), directory / WEIGHTS_FILE, metadata={"format": "pt"})
    return directory
