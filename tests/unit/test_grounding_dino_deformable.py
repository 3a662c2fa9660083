"""GroundingDINO's CPU paths: the deformable attention as one weighted gather
(``deformable.py``) and the encoder's feed-forward in blocks of rows (``feedforward.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

from engines.base import LoadRequest, VariantSpec
from engines.families.grounding_dino.deformable import (
    gathered_deformable_attention,
    use_gathered_attention,
)
from engines.families.grounding_dino.family import GroundingDinoFamily
from engines.families.grounding_dino.feedforward import BLOCK_ROWS, BlockedFeedForward
from engines.families.grounding_dino.tiny import write_tiny

SHAPES = [(20, 27), (10, 14), (5, 7), (3, 4)]


def inputs(
    batch: int, queries: int, heads: int, dim: int, points: int, seed: int = 0, spread: float = 1.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, dim, generator=generator, dtype=torch.float64)
    # a margin outside [0, 1]: zero padding at the borders counts too
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator)
    locations = (locations.double() - 0.5) * spread + 0.5
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator)
    weights = (weights / weights.sum((-1, -2), keepdim=True)).double()
    return value, locations, weights


def reference(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return MultiScaleDeformableAttention()(
        value, torch.tensor(SHAPES), SHAPES, None, locations, weights, 64
    )


@pytest.mark.parametrize(
    ("batch", "queries", "heads", "dim", "points"), [(1, 900, 8, 32, 4), (2, 50, 2, 8, 3)]
)
def test_gather_equals_grid_sampling(
    batch: int, queries: int, heads: int, dim: int, points: int
) -> None:
    value, locations, weights = inputs(batch, queries, heads, dim, points)
    expected = reference(value, locations, weights)
    got = gathered_deformable_attention(value, SHAPES, locations, weights)
    assert got.shape == expected.shape == (batch, queries, heads * dim)
    # float64: the same terms, summed in another order
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # float32: as close to the float64 result as the model's own float32 code is
    args32 = [t.float() for t in (value, locations, weights)]
    got32 = gathered_deformable_attention(args32[0], SHAPES, args32[1], args32[2])
    own32 = reference(*args32)
    assert got32.dtype == torch.float32
    own_error = (own32.double() - expected).abs().max().item()
    assert (got32.double() - expected).abs().max().item() <= max(2 * own_error, 1e-6)


def test_locations_on_borders_and_far_outside() -> None:
    value, locations, weights = inputs(1, 64, 2, 8, 4, seed=1, spread=1.0)
    # exact corners and edges of the maps, and points far off (weigh nothing: zero padding)
    locations[0, :8] = 0.0
    locations[0, 8:16] = 1.0
    locations[0, 16:24, ..., 0] = 0.5
    locations[0, 16:24, ..., 1] = 1.0
    locations[0, 24:32] = -1e6
    locations[0, 32:40] = 3e9
    expected = reference(value, locations, weights)
    got = gathered_deformable_attention(value, SHAPES, locations, weights)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got[0, 24:40].abs().max() == 0


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_a_trace_and_other_dtypes_run_the_models_own_code() -> None:
    kernel = torch.nn.Sequential(MultiScaleDeformableAttention())
    assert use_gathered_attention(kernel) == 1
    value, locations, weights = (t.float() for t in inputs(1, 30, 2, 8, 2))
    shapes = torch.tensor(SHAPES)

    def attend(v: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return kernel[0](v, shapes, SHAPES, None, loc, w, 64)

    eager = attend(value, locations, weights)
    torch.testing.assert_close(
        eager, gathered_deformable_attention(value, SHAPES, locations, weights), rtol=0, atol=0
    )
    traced = torch.jit.trace(attend, (value, locations, weights), check_trace=False)
    graph = str(traced.graph)
    assert "grid_sampler" in graph and "embedding_bag" not in graph
    half = [t.bfloat16() for t in (value, locations, weights)]
    torch.testing.assert_close(
        attend(*half), reference(*half), rtol=0, atol=0
    )  # bf16: the model's own code, bit for bit


def test_served_model_uses_both_cpu_paths(tmp_path: Path) -> None:
    checkpoint = tmp_path / write_tiny(tmp_path)["tiny"]
    pipeline = GroundingDinoFamily().load_torch(
        LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "float32", 2)
    )
    model = pipeline.core.module
    kernels = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    config = model.config
    assert len(kernels) == config.encoder_layers + config.decoder_layers
    assert all("forward" in vars(k) for k in kernels)
    blocked = [m for m in model.modules() if isinstance(m, BlockedFeedForward)]
    assert len(blocked) == config.encoder_layers
    # the class and a model loaded by transformers alone keep the model's own forward
    assert "forward" not in vars(MultiScaleDeformableAttention()) and kernels


# -- the encoder's feed-forward in blocks of rows ---------------------------------------------
@pytest.mark.parametrize("rows", [1, BLOCK_ROWS, 2 * BLOCK_ROWS + 17])
def test_blocked_feedforward_equals_the_layers(rows: int) -> None:
    torch.manual_seed(rows)
    fc1, fc2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)
    blocked = BlockedFeedForward(fc1, torch.nn.ReLU(), fc2).eval()
    x = torch.randn(1, rows, 64)
    with torch.inference_mode():
        expected = fc2(torch.relu(fc1(x)))
        got = blocked(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        got64 = BlockedFeedForward(fc1.double(), torch.nn.ReLU(), fc2.double())(x.double())
        torch.testing.assert_close(got64, fc2(torch.relu(fc1(x.double()))), rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_blocked_feedforward_traces_as_the_layers() -> None:
    blocked = BlockedFeedForward(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    x = torch.randn(3, 8)
    traced = torch.jit.trace(blocked.eval(), (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aten::linear" in graph and "relu" in graph and "addmm" not in graph
    with torch.inference_mode():
        torch.testing.assert_close(traced(x), blocked(x))
    assert blocked(x).requires_grad  # with gradients: the layers' own code
