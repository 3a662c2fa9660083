"""GroundingDINO exported to ONNX (exporter patches, dynamic sizes) and served through ORT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engines.artifacts import failed_gates, read_manifest
from engines.base import LoadRequest, VariantSpec
from engines.families.grounding_dino.export import EXPORT, PARITY_OPTIONS
from engines.families.grounding_dino.family import GroundingDinoFamily
from engines.families.grounding_dino.images import pad_batch
from engines.families.grounding_dino.patches import (
    deformable_attention_by_level,
    export_patches,
    special_token_masks,
)
from engines.families.grounding_dino.tiny import write_tiny
from engines.onnx_runtime import OrtCore, OrtOptions
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from export.onnx_export import ExportOptions, export_variant
from export.parity import default_images
from tests.conftest import ASSETS

PHOTOS = ("chelsea.jpg", "camera.png", "astronaut.png", "rocket.jpg")


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


def within_gates(figures: Mapping[str, float]) -> list[str]:
    """The gates of GroundingDino that ``figures`` fail."""
    assert set(EXPORT.parity_gates) <= set(figures), "a gated metric was not measured"
    return failed_gates(EXPORT.parity_gates, figures)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("grounding-dino")
    return directory / write_tiny(directory)["tiny"]


@pytest.fixture(scope="module")
def artifacts(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grounding-dino-artifacts")
    export_variant(
        GroundingDinoFamily(),
        VariantSpec("tiny", str(checkpoint)),
        ExportOptions(out=out, images=default_images()),
    )
    return out


@pytest.fixture(scope="module")
def request_(checkpoint: Path) -> LoadRequest:
    return LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "float32", 2)


def make_pool(checkpoint: Path, artifacts: Path, engine: str = "auto") -> ModelPool:
    spec = VariantSpec("tiny", str(checkpoint))
    config = PoolConfig(
        engine=engine,
        artifacts_dir=artifacts,
        dtype="float32",  # compared with ONNX fp32; auto may pick bf16 on a CPU with bf16 units
        variants={"grounding-dino": VariantTable("tiny", {"tiny": spec})},
    )
    return ModelPool(default_registry(), config)


# -- the exporter patches compute what they replace ---------------------------------------
def test_special_token_masks_equal_transformers() -> None:
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        generate_masks_with_special_tokens_and_transfer_map as original,
    )

    special = torch.tensor([101, 102, 1012, 1029])
    tokens = torch.tensor([101, 102, 1012, 1029, 7, 8])
    generator = torch.Generator().manual_seed(0)
    for case in range(100):
        batch = int(torch.randint(1, 4, (1,), generator=generator))
        length = int(torch.randint(1, 30, (1,), generator=generator))
        ids = tokens[torch.randint(0, len(tokens), (batch, length), generator=generator)]
        if case % 2:  # the shape captions have: [CLS] ... . ... . [SEP]
            ids[:, 0], ids[:, -1] = 101, 102
        expected, got = original(ids, special), special_token_masks(ids, special)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
        assert got[1].dtype == expected[1].dtype


def test_patches_are_undone_after_the_block() -> None:
    from transformers.models.grounding_dino import modeling_grounding_dino as gd
    from transformers.models.swin import modeling_swin as swin

    def current() -> tuple[Any, ...]:
        return (
            gd.generate_masks_with_special_tokens_and_transfer_map,
            swin.SwinLayer.forward,
            swin.SwinPatchMerging.maybe_pad,
            swin.SwinPatchEmbeddings.maybe_pad,
            gd.GroundingDinoMultiscaleDeformableAttention.forward,
            gd.MultiScaleDeformableAttention.forward,
        )

    before = current()
    with export_patches():
        assert gd.generate_masks_with_special_tokens_and_transfer_map is special_token_masks
        assert all(a is not b for a, b in zip(current(), before, strict=True))
    assert current() == before


def test_deformable_attention_by_level_equals_the_stacked_sum() -> None:
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        MultiScaleDeformableAttention,
    )

    generator = torch.Generator().manual_seed(0)
    shapes = [(20, 27), (10, 14), (5, 7), (3, 4)]
    for batch, queries, heads, dim, points in [(1, 900, 8, 32, 4), (2, 50, 2, 8, 3)]:
        tokens = sum(h * w for h, w in shapes)
        value = torch.randn(batch, tokens, heads, dim, generator=generator)
        # a margin outside [0, 1]: zero padding at the borders counts too
        locations = (
            torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.2
            - 0.1
        )
        weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
        weights = weights / weights.sum((-1, -2), keepdim=True)
        expected = MultiScaleDeformableAttention()(
            value, torch.tensor(shapes), shapes, None, locations, weights, 64
        )
        got = deformable_attention_by_level(value, shapes, locations, weights)
        assert got.shape == expected.shape == (batch, queries, heads * dim)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(224, 224), (213, 320), (230, 311), (225, 227)])
def test_patched_model_equals_the_model_in_eager_mode(
    request_: LoadRequest, size: tuple[int, int]
) -> None:
    pipeline = GroundingDinoFamily().load_torch(request_)
    rng = np.random.default_rng(sum(size))
    pixels = rng.standard_normal((1, 3, *size)).astype(np.float32)
    inputs = {
        "pixel_values": pixels,
        "pixel_mask": np.ones((1, *size), np.int64),
        **pipeline.caption(["a cat", "rocket"]).arrays(1),
    }
    expected = pipeline.core.run("model", inputs)
    with export_patches():
        got = pipeline.core.run("model", inputs)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


# -- the exported graph --------------------------------------------------------------------
def test_manifest_axes_and_parity(artifacts: Path) -> None:
    manifest = read_manifest(artifacts / "grounding-dino" / "tiny" / "fp32")
    (graph,) = manifest.graphs
    shapes = {t.name: t.shape for t in graph.inputs + graph.outputs}
    assert shapes["pixel_values"] == ["batch", 3, "height", "width"]
    assert shapes["pixel_mask"] == ["batch", "height", "width"]
    assert shapes["input_ids"] == ["batch", "text"]
    assert shapes["logits"][0] == "batch" and shapes["logits"][2] == "text"
    assert not within_gates(manifest.parity), manifest.parity
    assert manifest.parity["detections_per_run"] > 0


@pytest.mark.parametrize(
    ("sizes", "prompts"),
    [
        ([(224, 224)], ["rocket"]),
        ([(230, 311), (230, 311)], ["a cat", "a person", "coffee cup"]),
        ([(320, 224), (224, 298), (213, 320)], ["dog"]),  # padded, with a pixel mask
    ],
)
def test_graph_follows_sizes_batches_and_text_it_was_not_traced_with(
    artifacts: Path, request_: LoadRequest, sizes: list[tuple[int, int]], prompts: list[str]
) -> None:
    directory = artifacts / "grounding-dino" / "tiny" / "fp32"
    core = OrtCore(directory, read_manifest(directory), OrtOptions())
    pipeline = GroundingDinoFamily().load_torch(request_)
    rng = np.random.default_rng(len(sizes))
    pixels, mask = pad_batch([rng.standard_normal((3, *s)).astype(np.float32) for s in sizes])
    inputs = {
        "pixel_values": pixels,
        "pixel_mask": mask,
        **pipeline.caption(prompts).arrays(len(sizes)),
    }
    expected, got = pipeline.core.run("model", inputs), core.run("model", inputs)
    assert got["logits"].shape == expected["logits"].shape
    finite = np.isfinite(expected["logits"])
    assert np.array_equal(np.isfinite(got["logits"]), finite)
    np.testing.assert_allclose(got["logits"][finite], expected["logits"][finite], atol=1e-4)
    np.testing.assert_allclose(got["pred_boxes"], expected["pred_boxes"], atol=1e-5)


@pytest.fixture
async def torch_results(checkpoint: Path, artifacts: Path) -> AsyncIterator[list[dict[str, Any]]]:
    pool = make_pool(checkpoint, artifacts, engine="torch")
    outcome = await pool.infer("grounding-dino", None, [photo(n) for n in PHOTOS], PARITY_OPTIONS)
    assert outcome.model.engine == "torch"
    yield outcome.results
    await pool.close()


async def test_served_through_onnx_runtime_matches_torch(
    checkpoint: Path, artifacts: Path, torch_results: list[dict[str, Any]]
) -> None:
    pool = make_pool(checkpoint, artifacts)
    try:
        outcome = await pool.infer(
            "grounding-dino", None, [photo(n) for n in PHOTOS], PARITY_OPTIONS
        )
        model = outcome.model
        assert model.engine == "onnx" and model.fallback_reason is None
        assert model.placement == {"model": "onnx"}
        figures = EXPORT.parity_metrics(torch_results, outcome.results)
        assert not within_gates(figures), figures
        assert figures["detections_per_run"] > 0
    finally:
        await pool.close()


def test_parity_metrics_pair_queries_by_their_proposals() -> None:
    rng = np.random.default_rng(0)
    raw = {
        "logits": rng.normal(size=(20, 6)).astype(np.float32),
        "pred_boxes": rng.uniform(0.1, 0.9, size=(20, 4)).astype(np.float32),
        "reference_points": rng.uniform(0.1, 0.9, size=(20, 4)).astype(np.float32),
    }

    def result(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"width": 100, "height": 50, "detections": [], "raw": arrays}

    order = np.arange(20)
    order[[4, 5]] = order[[5, 4]]  # two near-equal encoder scores swapped ranks
    swapped = {k: v[order] for k, v in raw.items()}
    figures = EXPORT.parity_metrics([result(raw)], [result(swapped)])
    assert figures["queries_matched_fraction"] == 1.0
    assert figures["query_probs_max_abs_diff"] == 0.0  # each compared with itself
    # ... but swapped ranks change the decoder's input (content queries are per rank).
    assert figures["images_same_selection_fraction"] == 0.0
    figures = EXPORT.parity_metrics([result(raw)], [result(raw)])
    assert figures["images_same_selection_fraction"] == 1.0

    # Another proposal entered the top-k: that image's queries are not gated as continuous
    # figures (the decoder mixes all queries), only reported; with no other image to compare,
    # the query figures fall back to all paired queries.
    flipped = {k: v.copy() for k, v in raw.items()}
    flipped["reference_points"][19] = [0.5, 0.5, 0.01, 0.01]
    flipped["logits"] += 0.5
    figures = EXPORT.parity_metrics([result(raw)], [result(flipped)])
    assert figures["queries_matched_fraction"] == 19 / 20
    assert figures["images_same_selection_fraction"] == 0.0
    assert figures["flipped_query_probs_max_abs_diff"] > 0.01
    assert figures["query_probs_max_abs_diff"] == figures["flipped_query_probs_max_abs_diff"]
    figures = EXPORT.parity_metrics([result(raw)] * 2, [result(raw), result(flipped)])
    assert figures["images_same_selection_fraction"] == 0.5
    assert figures["query_probs_max_abs_diff"] == 0.0
