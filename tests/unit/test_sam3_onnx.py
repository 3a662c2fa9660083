"""SAM3 exported to ONNX (vision / text / decoder) and served through ONNX Runtime, tiny model."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from engines.artifacts import failed_gates, read_manifest, write_manifest
from engines.base import LoadRequest, VariantSpec
from engines.families.sam3.export import EXPORT, PARITY_OPTIONS
from engines.families.sam3.family import Sam3Family
from engines.families.sam3.pipeline import Sam3Pipeline
from engines.families.sam3.tiny import write_tiny
from engines.onnx_runtime import OrtCore, OrtOptions
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from export.onnx_export import ExportOptions, export_variant
from export.parity import default_images
from tests.conftest import ASSETS

# pycocotools' decode trips a numpy 2 DeprecationWarning inside its own code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PHOTOS = ("chelsea.jpg", "camera.png", "coffee.png")


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


def within_gates(figures: Mapping[str, float]) -> list[str]:
    """The gates of Sam3 that ``figures`` fail."""
    assert set(EXPORT.parity_gates) <= set(figures), "a gated metric was not measured"
    return failed_gates(EXPORT.parity_gates, figures)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sam3")
    return directory / write_tiny(directory)["tiny"]


@pytest.fixture(scope="module")
def artifacts(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sam3-artifacts")
    export_variant(
        Sam3Family(),
        VariantSpec("tiny", str(checkpoint)),
        ExportOptions(out=out, images=default_images()),
    )
    return out


def make_pool(checkpoint: Path, artifacts: Path, engine: str = "auto") -> ModelPool:
    spec = VariantSpec("tiny", str(checkpoint))
    config = PoolConfig(
        engine=engine,
        artifacts_dir=artifacts,
        dtype="float32",  # compared with ONNX fp32; auto may pick bf16 on a CPU with bf16 units
        variants={"sam3": VariantTable("tiny", {"tiny": spec})},
    )
    return ModelPool(default_registry(), config)


@pytest.fixture
async def torch_results(checkpoint: Path, artifacts: Path) -> AsyncIterator[list[dict[str, Any]]]:
    pool = make_pool(checkpoint, artifacts, engine="torch")
    outcome = await pool.infer("sam3", None, [photo(n) for n in PHOTOS], PARITY_OPTIONS)
    assert outcome.model.engine == "torch"
    yield outcome.results
    await pool.close()


def test_manifest_has_three_graphs_with_dynamic_batch_and_prompts(artifacts: Path) -> None:
    manifest = read_manifest(artifacts / "sam3" / "tiny" / "fp32")
    graphs = {g.name: g for g in manifest.graphs}
    assert set(graphs) == {"vision", "text", "decoder"}
    shapes = {(g.name, t.name): t.shape for g in manifest.graphs for t in g.inputs + g.outputs}
    assert shapes[("vision", "pixel_values")][0] == "batch"
    assert all(
        s[0] == "batch" for (g, n), s in shapes.items() if g == "vision" and n.startswith("fpn_")
    )
    assert shapes[("text", "input_ids")][0] == "prompts"
    assert shapes[("decoder", "text_features")][0] == "prompts"
    assert shapes[("decoder", "pred_masks")][0] == "prompts"
    assert shapes[("decoder", "fpn_hidden_states_0")][0] == "image_rows"
    assert not within_gates(manifest.parity), manifest.parity
    assert manifest.parity["instances_matched_fraction"] == 1.0


def test_vision_graph_has_a_dynamic_batch(checkpoint: Path, artifacts: Path) -> None:
    directory = artifacts / "sam3" / "tiny" / "fp32"
    core = OrtCore(directory, read_manifest(directory), OrtOptions())
    request = LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "float32", 2)
    torch_pipeline = Sam3Family().load_torch(request)
    pixels = np.stack([torch_pipeline.preprocessing(photo(n)) for n in PHOTOS])  # batch 3
    got, expected = (
        core.run("vision", {"pixel_values": pixels}),
        torch_pipeline.core.run("vision", {"pixel_values": pixels}),
    )
    for name, value in expected.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4)


def test_decoder_graph_takes_a_broadcast_or_a_per_prompt_embedding(
    checkpoint: Path, artifacts: Path
) -> None:
    directory = artifacts / "sam3" / "tiny" / "fp32"
    request = LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "float32", 2)
    onnx = Sam3Family().load_onnx(
        request, OrtCore(directory, read_manifest(directory), OrtOptions())
    )
    torch_pipeline = Sam3Family().load_torch(request)
    pixels = torch_pipeline.preprocessing(photo("chelsea.jpg"))[None]
    (embedding,) = onnx.encode_images(pixels)
    # Three prompts: neither the traced prompt count (2) nor the embedding's batch (1).
    text = onnx.encode_text(onnx.tokenizer(["cat", "a red dog", "person"]))
    inputs = {**text, **embedding}
    broadcast = onnx.core.run("decoder", inputs)
    repeated = onnx.core.run(
        "decoder", {**text, **{k: np.repeat(v, 3, 0) for k, v in embedding.items()}}
    )
    reference = torch_pipeline.core.run("decoder", inputs)
    for name, value in broadcast.items():
        assert value.shape[0] == 3
        np.testing.assert_allclose(value, repeated[name], atol=1e-5)
        np.testing.assert_allclose(value, reference[name], atol=1e-4, rtol=1e-4)


async def test_served_through_onnx_runtime_matches_torch(
    checkpoint: Path, artifacts: Path, torch_results: list[dict[str, Any]]
) -> None:
    pool = make_pool(checkpoint, artifacts)
    try:
        outcome = await pool.infer("sam3", None, [photo(n) for n in PHOTOS], PARITY_OPTIONS)
        model = outcome.model
        assert model.engine == "onnx" and model.fallback_reason is None
        assert model.placement == {"vision": "onnx", "text": "onnx", "decoder": "onnx"}
        figures = EXPORT.parity_metrics(torch_results, outcome.results)
        assert not within_gates(figures), figures
        assert sum(len(r["instances"]) for r in outcome.results) > 0
    finally:
        await pool.close()


async def test_image_encoded_once_for_all_prompts(checkpoint: Path, artifacts: Path) -> None:
    pool = make_pool(checkpoint, artifacts, engine="onnx")
    try:
        model = await pool.load("sam3")
        pipeline = model.pipeline
        assert isinstance(pipeline, Sam3Pipeline) and isinstance(pipeline.core, OrtCore)
        calls: list[tuple[str, int]] = []
        run = pipeline.core.run

        def counting(graph: str, inputs: Mapping[str, Any], *, host: bool = True) -> Any:
            rows = inputs.get("text_features", inputs.get("input_ids", inputs.get("pixel_values")))
            calls.append((graph, len(rows)))
            return run(graph, inputs, host=host)

        pipeline.core.run = counting  # type: ignore[method-assign]
        options = _Options(prompts=["cat", "person", "a dog"])
        await pool.infer("sam3", None, [photo("chelsea.jpg"), photo("camera.png")], options)
        # Each image through the vision graph once (both in one call), the prompts through
        # the text graph once, then one decoder call per image (3 prompts <= 8 per call).
        # (ORT on CPU: one image per vision call, to bound its attention memory.)
        assert [(g, n) for g, n in calls if g != "decoder"] == [
            ("text", 3),
            ("vision", 1),
            ("vision", 1),
        ]
        assert [n for g, n in calls if g == "decoder"] == [3, 3]
    finally:
        await pool.close()


async def test_graph_missing_from_artifact_runs_on_torch(
    checkpoint: Path, artifacts: Path, tmp_path: Path, torch_results: list[dict[str, Any]]
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts, root)
    directory = root / "sam3" / "tiny" / "fp32"
    manifest = read_manifest(directory)
    manifest.graphs = [g for g in manifest.graphs if g.name != "decoder"]
    write_manifest(directory, manifest)
    (directory / "decoder.onnx").unlink()
    pool = make_pool(checkpoint, root)
    try:
        outcome = await pool.infer("sam3", None, [photo(n) for n in PHOTOS], PARITY_OPTIONS)
        model = outcome.model
        assert model.engine == "onnx+torch"
        assert model.placement == {"vision": "onnx", "text": "onnx", "decoder": "torch"}
        assert "decoder" in (model.fallback_reason or "")
        figures = EXPORT.parity_metrics(torch_results, outcome.results)
        assert not within_gates(figures), figures
    finally:
        await pool.close()


class _Options(msgspec.Struct):
    prompts: list[str]
    threshold: float = 0.0
    mask_threshold: float = 0.5
    output_format: str = "rle"
