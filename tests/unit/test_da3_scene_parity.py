"""Our DA3 scene forward (the views of one scene together) against the reference's multi-view
forward, on random weights, and the ONNX-ready :class:`SceneGraph` against both.

As in ``test_da3_parity``, the reference is built from its preset with seeded random weights,
saved in the official layout and loaded with ``load_da3``. Here the class token's own embedding
is zero, so that class tokens reflect the views' content: with a shared class embedding every
pair of views is nearly alike, and ``saddle_sim_range`` then ties between the two most similar
views up to rounding (see ``da3.views``), which no port decides as the reference does.
Needs ``requirements-oracle.txt`` (the whole module is skipped without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("depth_anything_3")
pytest.importorskip("omegaconf")
pytest.importorskip("addict")
pytest.importorskip("einops")

import depth_anything_3.model.dinov2.vision_transformer as reference_vit  # noqa: E402
from depth_anything_3.model import reference_view_selector as reference_views  # noqa: E402
from depth_anything_3.model.utils.transform import extri_intri_to_pose_encoding  # noqa: E402
from depth_anything_3.utils.geometry import affine_inverse  # noqa: E402

from engines.families.depth_anything.da3 import (  # noqa: E402
    REF_VIEW_STRATEGIES,
    Da3Network,
    Da3Output,
    SceneGraph,
    load_da3,
)
from engines.families.depth_anything.da3.camera import (  # noqa: E402
    cameras_to_pose,
    quaternion_to_matrix,
)
from engines.families.depth_anything.da3.tiny import TINY_CONFIGS, randomize  # noqa: E402
from engines.families.depth_anything.da3.views import (  # noqa: E402
    input_order,
    reference_first,
    strategy_indices,
)
from tests.unit.test_da3_parity import build_reference, rel_error, save_official  # noqa: E402

RTOL = 1e-4  # per view and output: max |ours - reference| / max |reference|, fp32
# ONNX Runtime's kernels against torch's: their rounding differs by CPU. On a 2-core AVX2 EPYC
# the 3-view intrinsics (no cameras, saddle_balanced) came to 1.07e-4 while every other output
# stayed under 8e-6; on AVX-512 machines all stayed under 1e-4.
ONNX_RTOL = 5e-4
INPUT_HW = (98, 126)  # a 7 x 9 patch grid
VIEW_GAINS = (1.0, -1.0, 2.0, -2.0, 0.5)  # views differ in contrast and sign
OUTPUTS = {
    "depth": "depth",
    "confidence": "depth_conf",
    "intrinsics": "intrinsics",
    "extrinsics": "extrinsics",
}


@torch.no_grad()
def zero_class_embedding(backbone: torch.nn.Module) -> None:
    """Class tokens that depend on the view only (see the module docstring)."""
    backbone.cls_token.zero_()
    backbone.pos_embed[:, 0].zero_()


@pytest.fixture(scope="module", params=["da3-small", "da3-base"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    preset = request.param
    reference = build_reference(preset)
    zero_class_embedding(reference.backbone.pretrained)
    network, _ = load_da3(save_official(reference, tmp_path_factory.mktemp(preset), preset))
    return reference, network


@pytest.fixture(scope="module")
def tiny_network() -> Da3Network:
    network = Da3Network(TINY_CONFIGS["anyview"]).eval()
    randomize(network, seed=0)
    zero_class_embedding(network.backbone.pretrained)
    return network


def scene_views(count: int, seed: int, hw: tuple[int, int] = INPUT_HW) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    gains = torch.tensor(VIEW_GAINS[:count]).view(count, 1, 1, 1)
    offsets = 2 * torch.randn(count, 3, 1, 1, generator=generator)
    return gains * torch.randn(count, 3, *hw, generator=generator) + offsets


def random_cameras(
    count: int, seed: int, hw: tuple[int, int] = INPUT_HW
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid cameras: random rotations and translations, focal lengths near the width."""
    generator = torch.Generator().manual_seed(seed)
    extrinsics = torch.eye(4).repeat(count, 1, 1)
    extrinsics[:, :3, :3] = quaternion_to_matrix(torch.randn(count, 4, generator=generator))
    extrinsics[:, :3, 3] = torch.randn(count, 3, generator=generator)
    height, width = hw
    intrinsics = torch.eye(3).repeat(count, 1, 1)
    intrinsics[:, 0, 0] = width * (0.7 + torch.rand(count, generator=generator))
    intrinsics[:, 1, 1] = width * (0.7 + torch.rand(count, generator=generator))
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = width / 2, height / 2
    return extrinsics, intrinsics


def run_reference(
    model: torch.nn.Module,
    views: torch.Tensor,
    cameras: tuple[torch.Tensor, torch.Tensor] | None = None,
    strategy: str = "saddle_balanced",
) -> dict[str, torch.Tensor]:
    extrinsics, intrinsics = (None, None) if cameras is None else (c[None] for c in cameras)
    with torch.inference_mode():
        out = model(views[None], extrinsics, intrinsics, ref_view_strategy=strategy)
    return {k: v[0] for k, v in out.items() if isinstance(v, torch.Tensor)}


def view_errors(ours: Da3Output, expected: dict[str, torch.Tensor]) -> dict[str, float]:
    """The worst view's relative error, per output."""
    errors = {}
    for name, key in OUTPUTS.items():
        mine, theirs = getattr(ours, name), expected[key]
        assert mine.shape == theirs.shape, (name, mine.shape, theirs.shape)
        errors[name] = max(rel_error(m, t) for m, t in zip(mine, theirs, strict=True))
    return errors


@pytest.mark.parametrize("count", [2, 3, 5])
def test_scene_matches_reference(pair, count: int) -> None:
    reference, network = pair
    views = scene_views(count, seed=count)
    expected = run_reference(reference, views)
    with torch.inference_mode():
        ours = network.forward_scene(views)
        alone = network(views)
    errors = view_errors(ours, expected)
    assert max(errors.values()) <= RTOL, errors
    assert ours.depth.shape == (count, *INPUT_HW)
    # The views attend to each other: each image on its own gives other cameras.
    assert rel_error(alone.extrinsics, ours.extrinsics) > 100 * RTOL


@pytest.mark.parametrize("strategy", REF_VIEW_STRATEGIES)
def test_reference_view_strategies_match(
    pair, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, network = pair
    picks: list[int] = []

    def recorded(x: torch.Tensor, strategy: str) -> torch.Tensor:
        pick = reference_views.select_reference_view(x, strategy)
        picks.append(int(pick))
        return pick

    monkeypatch.setattr(reference_vit, "select_reference_view", recorded)
    views = scene_views(5, seed=5)
    expected = run_reference(reference, views, strategy=strategy)
    with torch.inference_mode():
        ours = network.forward_scene(views, ref_view_strategy=strategy)
    errors = view_errors(ours, expected)
    assert max(errors.values()) <= RTOL, errors
    assert len(picks) == 1
    if strategy == "middle":
        assert picks == [2]
    elif strategy.startswith("saddle"):  # these views make both pick another view than 0
        assert picks != [0]


@pytest.mark.parametrize("count", [2, 3, 5])
def test_given_cameras_match_reference(pair, count: int) -> None:
    reference, network = pair
    views = scene_views(count, seed=10 + count)
    cameras = random_cameras(count, seed=count)
    expected = run_reference(reference, views, cameras)
    with torch.inference_mode():
        ours = network.forward_scene(views, *cameras)
        unposed = network.forward_scene(views)
    errors = view_errors(ours, expected)
    assert max(errors.values()) <= RTOL, errors
    assert rel_error(unposed.extrinsics, ours.extrinsics) > 100 * RTOL  # the cameras count


def test_camera_conditioning_skips_the_reference_view_selection(pair) -> None:
    _, network = pair
    views, cameras = scene_views(5, seed=20), random_cameras(5, seed=20)
    with torch.inference_mode():
        outputs = [
            network.forward_scene(views, *cameras, strategy) for strategy in REF_VIEW_STRATEGIES
        ]
    for out in outputs[1:]:
        assert torch.equal(out.depth, outputs[0].depth)
        assert torch.equal(out.extrinsics, outputs[0].extrinsics)


@pytest.mark.parametrize("count", [2, 3, 4, 5, 8])
def test_strategy_indices_match_reference_selector(count: int) -> None:
    generator = torch.Generator().manual_seed(count)
    for _ in range(20):
        tokens = torch.randn(1, count, 1, 16, generator=generator)  # (B, S, N, C)
        ours = strategy_indices(tokens[0, :, 0])
        expected = [
            int(reference_views.select_reference_view(tokens, s)) for s in REF_VIEW_STRATEGIES
        ]
        assert ours.tolist() == expected


@pytest.mark.parametrize("count", [1, 2, 5])
def test_reordering_matches_reference(count: int) -> None:
    items = torch.arange(count)[None, :, None]
    for pick in range(count):
        index = torch.tensor(pick)
        expected = reference_views.reorder_by_reference(items, index[None])[0, :, 0]
        order = reference_first(index, count)
        assert torch.equal(order, expected)
        restored = reference_views.restore_original_order(items[:, order], index[None])
        assert torch.equal(order[input_order(index, count)], torch.arange(count))
        assert torch.equal(restored[0, :, 0], torch.arange(count))


def test_pose_encoding_matches_reference() -> None:
    extrinsics, intrinsics = random_cameras(16, seed=30)
    # Half turns about x, y and z: each branch of the matrix-to-quaternion conversion.
    extrinsics[:3, :3, :3] = torch.diag_embed(
        torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    )
    expected = extri_intri_to_pose_encoding(
        affine_inverse(extrinsics)[None], intrinsics[None], INPUT_HW
    )[0]
    assert torch.equal(cameras_to_pose(extrinsics, intrinsics, *INPUT_HW), expected)


def graph_outputs(out: Da3Output) -> tuple[Any, ...]:
    return out.depth, out.confidence, out.intrinsics, out.extrinsics


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_scene_graph_equals_forward_scene(tiny_network: Da3Network, count: int) -> None:
    graph = SceneGraph(tiny_network)
    views = scene_views(count, seed=40, hw=(56, 70))
    cameras = random_cameras(count, seed=40, hw=(56, 70))
    for has_cameras in (False, True):
        for index, strategy in enumerate(REF_VIEW_STRATEGIES):
            given = cameras if has_cameras else (None, None)
            with torch.inference_mode():
                expected = graph_outputs(tiny_network.forward_scene(views, *given, strategy))
                ours = graph(views, *cameras, torch.tensor(has_cameras), torch.tensor(index))
            for mine, theirs in zip(ours, expected, strict=True):
                assert torch.equal(mine, theirs), (has_cameras, strategy)


def test_scene_graph_exports_to_onnx(tiny_network: Da3Network, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    ort = pytest.importorskip("onnxruntime")
    graph = SceneGraph(tiny_network)
    names = ["pixel_values", "extrinsics", "intrinsics", "has_cameras", "ref_strategy"]
    outputs = ["depth", "confidence", "intrinsics_out", "extrinsics_out"]
    per_view, image = {0: "views"}, {0: "views", 1: "height", 2: "width"}
    example = (
        scene_views(3, seed=50, hw=(56, 70)),
        *random_cameras(3, seed=50, hw=(56, 70)),
        torch.tensor(False),
        torch.tensor(2),
    )
    path = tmp_path / "scene.onnx"
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=outputs,
            dynamic_axes={
                "pixel_values": {0: "views", 2: "height", 3: "width"},
                "extrinsics": per_view,
                "intrinsics": per_view,
                "depth": image,
                "confidence": image,
                "intrinsics_out": per_view,
                "extrinsics_out": per_view,
            },
            opset_version=18,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Seeds whose saddle_sim_range pick is clear (no near-tie for ORT's rounding to flip).
    for count, seed, hw in [(2, 60, (42, 56)), (3, 5, (56, 70)), (5, 0, (70, 42))]:
        views = scene_views(count, seed=seed, hw=hw)
        cameras = random_cameras(count, seed=seed, hw=hw)
        extrinsics_by_strategy = []
        for has_cameras in (False, True):
            for index, strategy in enumerate(REF_VIEW_STRATEGIES):
                given = cameras if has_cameras else (None, None)
                with torch.inference_mode():
                    expected = graph_outputs(tiny_network.forward_scene(views, *given, strategy))
                feed = {
                    "pixel_values": views.numpy(),
                    "extrinsics": cameras[0].numpy(),
                    "intrinsics": cameras[1].numpy(),
                    "has_cameras": np.array(has_cameras),
                    "ref_strategy": np.array(index, dtype=np.int64),
                }
                ours = session.run(None, feed)
                for mine, theirs in zip(ours, expected, strict=True):
                    error = rel_error(torch.from_numpy(mine), theirs)
                    assert error <= ONNX_RTOL, (count, has_cameras, strategy, error)
                if not has_cameras:
                    extrinsics_by_strategy.append(torch.from_numpy(ours[3]))
        first, middle = extrinsics_by_strategy[:2]
        # The graph reorders by its inputs: "middle" picks view 1 of 3 and view 2 of 5.
        assert rel_error(middle, first) > (100 * RTOL if count >= 3 else -1)
        if count < 3:
            assert torch.equal(middle, first)


def test_scene_needs_an_any_view_model_and_known_strategy(tiny_network: Da3Network) -> None:
    views = scene_views(2, seed=70, hw=(28, 28))
    with pytest.raises(ValueError, match="ref_view_strategy"):
        tiny_network.forward_scene(views, ref_view_strategy="last")
    with pytest.raises(ValueError, match="both"):
        tiny_network.forward_scene(views, extrinsics=torch.eye(4).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="intrinsics"):
        tiny_network.forward_scene(views, torch.eye(4).repeat(2, 1, 1), torch.eye(3)[None])
    mono = Da3Network(TINY_CONFIGS["mono"]).eval()
    with pytest.raises(ValueError, match="any-view"):
        mono.forward_scene(views)
    with pytest.raises(ValueError, match="any-view"):
        SceneGraph(mono)
