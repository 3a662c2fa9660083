"""Our DA3 network against the reference package (the oracle), on random weights.

Each architecture is built from its preset by the reference, saved in the official checkpoint
layout and loaded back with ``load_da3``; both networks then see the same input.
Needs ``requirements-oracle.txt`` (the whole module is skipped without it).
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("depth_anything_3")
pytest.importorskip("omegaconf")
pytest.importorskip("addict")
pytest.importorskip("einops")

from addict import Dict  # noqa: E402
from depth_anything_3.cfg import create_object, load_config  # noqa: E402
from depth_anything_3.model.da3 import DepthAnything3Net  # noqa: E402
from depth_anything_3.registry import MODEL_REGISTRY  # noqa: E402
from depth_anything_3.utils.alignment import apply_metric_scaling  # noqa: E402

from engines.families.depth_anything.da3 import (  # noqa: E402
    PRESETS,
    Da3Network,
    apply_sky_rule,
    load_da3,
    metric_depth_m,
    save_da3,
)
from engines.families.depth_anything.da3.checkpoint import read_config  # noqa: E402
from engines.families.depth_anything.da3.tiny import TINY_CONFIGS, write_tiny_da3  # noqa: E402

RTOL = 1e-4  # max |ours - reference| / max |reference|, per output, fp32
INPUT_HW = (140, 196)  # a 10 x 14 patch grid: interpolated position embedding, non-square


def rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().clamp_min(1e-12)
    return float((ours.double() - reference.double()).abs().max() / scale)


@torch.no_grad()
def build_reference(preset: str) -> torch.nn.Module:
    """The reference network with seeded random weights, nudged to exercise every path."""
    torch.manual_seed(0)
    model = create_object(load_config(MODEL_REGISTRY[preset])).eval()
    for name, param in model.named_parameters():
        if name.endswith(("pos_embed", "cls_token")):  # zeros by default: make them matter
            param.normal_(0, 0.5)
    if getattr(model, "cam_dec", None) is not None:
        model.cam_dec.fc_fov[0].bias.fill_(1.0)  # fields of view well inside (0, pi)
    sky = getattr(model.head.scratch, "sky_output_conv2", None)
    if sky is not None:
        sky[2].weight.mul_(30)  # both sky and non-sky pixels, so the sky rule acts
    return model


def save_official(model: torch.nn.Module, directory: Path, preset: str, dedupe: bool = True):
    """The official layout; ``dedupe`` stores shared tensors once, as save_model does."""
    directory.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key in sorted(model.state_dict()):
        tensor = model.state_dict()[key]
        if dedupe and tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        # Without deduplication, copies: safetensors refuses tensors that share memory.
        state[f"model.{key}"] = tensor.contiguous() if dedupe else tensor.clone()
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"model_name": preset}))
    return directory


def run_reference(model: torch.nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(pixels[:, None])  # independent images: batch axis, one view each
    return {k: v[:, 0] for k, v in out.items() if isinstance(v, torch.Tensor)}


def compare(ours, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    pairs = {
        "depth": (ours.depth, reference["depth"]),
        "confidence": (ours.confidence, reference.get("depth_conf")),
        "intrinsics": (ours.intrinsics, reference.get("intrinsics")),
        "extrinsics": (ours.extrinsics, reference.get("extrinsics")),
        "sky": (ours.sky, reference.get("sky")),
    }
    errors = {}
    for name, (mine, theirs) in pairs.items():
        assert (mine is None) == (theirs is None), name
        if mine is not None:
            errors[name] = rel_error(mine, theirs)
    return errors


PRESET_CASES = [
    "da3-small",
    "da3-base",
    "da3mono-large",
    "da3metric-large",
    "da3-large",
    pytest.param("da3-giant", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("preset", PRESET_CASES)
def test_matches_reference(preset: str, tmp_path: Path) -> None:
    if preset == "da3-giant":  # its 3D-Gaussian head imports evo (and scipy)
        pytest.importorskip("evo")
        pytest.importorskip("scipy")
    reference = build_reference(preset)
    pixels = torch.randn(1, 3, *INPUT_HW, generator=torch.Generator().manual_seed(1))
    expected = run_reference(reference, pixels)
    save_official(reference, tmp_path, preset)
    del reference
    gc.collect()

    network, config = load_da3(tmp_path)
    assert config == PRESETS[preset]
    with torch.inference_mode():
        ours = network(pixels)
    errors = compare(ours, expected)
    assert max(errors.values()) <= RTOL, errors
    assert ours.depth.shape == (1, *INPUT_HW)
    if ours.sky is not None:
        sky_fraction = float((ours.sky >= 0.3).float().mean())
        assert 0.05 < sky_fraction < 0.95, "the sky rule was not exercised"


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory):
    reference = build_reference("da3-small")
    directory = save_official(reference, tmp_path_factory.mktemp("da3-small"), "da3-small")
    network, _ = load_da3(directory)
    return reference, network


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 112, 224), (1, 3, 518, 518)],  # a batch; the trained grid (no interpolation)
    ids=["batch-of-two", "trained-size"],
)
def test_small_other_inputs(small_pair, shape: tuple[int, ...]) -> None:
    reference, network = small_pair
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    expected = run_reference(reference, pixels)
    with torch.inference_mode():
        ours = network(pixels)
    errors = compare(ours, expected)
    assert max(errors.values()) <= RTOL, errors
    if len(pixels) > 1:  # images are independent
        with torch.inference_mode():
            alone = network(pixels[-1:])
        assert rel_error(alone.depth[0], ours.depth[-1]) <= RTOL


def test_checkpoint_with_every_alias_stored_loads(small_pair, tmp_path: Path) -> None:
    reference, network = small_pair
    save_official(reference, tmp_path, "da3-small", dedupe=False)
    state = load_file(tmp_path / "model.safetensors")
    aliases = [k for k in state if re.fullmatch(r".*output_conv2_aux\.\d\.2\.\w+", k)]
    assert len(aliases) == 8  # weight and bias of one LayerNorm, under four names each
    loaded, _ = load_da3(tmp_path)
    for (name, mine), (_, theirs) in zip(
        loaded.state_dict().items(), network.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name


def test_camera_encoder_matches_reference(small_pair) -> None:
    reference, network = small_pair
    pose = torch.randn(2, 1, 9, generator=torch.Generator().manual_seed(3))
    enc = reference.cam_enc
    with torch.inference_mode():
        expected = enc.trunk_norm(enc.trunk(enc.token_norm(enc.pose_branch(pose))))
        ours = network.cam_enc(pose)
    assert rel_error(ours, expected) <= RTOL


@pytest.mark.parametrize(
    "sky_pixels", [0, 5, 11, 2000, 4096 - 11, 4096 - 5, 4096], ids=lambda n: f"sky{n}"
)
def test_sky_rule_matches_reference(sky_pixels: int) -> None:
    generator = torch.Generator().manual_seed(4)
    depth = torch.rand(1, 64, 64, generator=generator) * 10
    order = torch.randperm(64 * 64, generator=generator)
    sky = torch.zeros(64 * 64)
    sky[order[:sky_pixels]] = 0.3 + torch.rand(sky_pixels, generator=generator)
    sky = sky.view(1, 64, 64)
    expected = DepthAnything3Net._process_mono_sky_estimation(
        None, Dict(depth=depth[:, None].clone(), sky=sky[:, None])
    ).depth[:, 0]
    ours = apply_sky_rule(depth, sky)
    assert rel_error(ours, expected) <= 1e-6


def test_sky_rule_is_per_image() -> None:
    depth = torch.stack([torch.linspace(1, 2, 400), torch.linspace(10, 20, 400)]).view(2, 20, 20)
    sky = torch.zeros(2, 20, 20)
    sky[:, :5] = 1.0
    out = apply_sky_rule(depth, sky)
    assert out[0, :5].max() <= 2 and out[1, :5].min() >= 10


def test_metric_depth_matches_reference() -> None:
    depth = torch.rand(2, 1, 8, 8) + 0.5
    intrinsics = torch.eye(3).repeat(2, 1, 1, 1)
    intrinsics[:, 0, 0, 0] = torch.tensor([500.0, 800.0])
    intrinsics[:, 0, 1, 1] = torch.tensor([520.0, 760.0])
    expected = apply_metric_scaling(depth, intrinsics)[:, 0]
    focal = (intrinsics[:, 0, 0, 0] + intrinsics[:, 0, 1, 1]) / 2
    assert rel_error(metric_depth_m(depth[:, 0], focal), expected) <= 1e-6
    assert rel_error(metric_depth_m(depth[:1, 0], 510.0), expected[:1]) <= 1e-6


@pytest.mark.parametrize("kind", ["anyview", "mono", "metric"])
def test_tiny_checkpoint_loads_and_runs(kind: str, tmp_path: Path) -> None:
    write_tiny_da3(tmp_path / "a", kind)
    write_tiny_da3(tmp_path / "b", kind)
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]  # deterministic
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model_name"]

    network, config = load_da3(tmp_path / "a")
    assert config == TINY_CONFIGS[kind]
    for height, width in [(56, 56), (140, 98)]:
        with torch.inference_mode():
            out = network(torch.randn(2, 3, height, width))
        assert out.depth.shape == (2, height, width)
        assert torch.isfinite(out.depth).all() and (out.depth > 0).all()
        if kind == "anyview":
            assert out.confidence is not None and out.intrinsics is not None
            assert out.extrinsics is not None and out.extrinsics.shape == (2, 3, 4)
            assert out.sky is None
        else:
            assert out.sky is not None and out.confidence is None and out.intrinsics is None


def test_preset_only_config_loads(tmp_path: Path) -> None:
    torch.manual_seed(5)
    network = Da3Network(PRESETS["da3-small"]).eval()
    save_da3(network, tmp_path / "preset", preset_only=True)
    save_da3(network, tmp_path / "explicit")
    assert json.loads((tmp_path / "preset" / "config.json").read_text()) == {
        "model_name": "da3-small"
    }
    assert read_config(tmp_path / "preset") == read_config(tmp_path / "explicit")
    loaded, config = load_da3(tmp_path / "preset")
    assert config == PRESETS["da3-small"]
    pixels = torch.randn(1, 3, 56, 84)
    with torch.inference_mode():
        assert torch.equal(loaded(pixels).depth, network(pixels).depth)


def test_mismatched_checkpoints_fail_loudly(tmp_path: Path) -> None:
    write_tiny_da3(tmp_path, "anyview")
    state = load_file(tmp_path / "model.safetensors")

    missing = dict(state)
    del missing["model.head.scratch.refinenet1.out_conv.weight"]
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="1 missing"):
        load_da3(tmp_path)

    save_file({**state, "model.head.extra": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_da3(tmp_path)

    save_file({k[len("model.") :]: v for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="prefix"):
        load_da3(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-tiny-unknown"}))
    with pytest.raises(ValueError, match="no DA3 preset"):
        load_da3(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3nested-giant-large"}))
    with pytest.raises(ValueError, match="not supported"):
        load_da3(tmp_path)
