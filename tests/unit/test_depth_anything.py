"""Depth Anything through the pool on tiny checkpoints, against the raw networks and references."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engines.base import LoadRequest, VariantSpec
from engines.families.depth_anything.da3 import load_da3, preprocess_da3
from engines.families.depth_anything.export import EXPORT
from engines.families.depth_anything.family import DepthAnythingFamily
from engines.families.depth_anything.maps import depth_to_png, png_to_depth, resize_depth
from engines.families.depth_anything.options import DepthAnythingOptions
from engines.families.depth_anything.pipeline import DepthNetwork, default_focal_px
from engines.families.depth_anything.tiny import write_tiny
from engines.families.depth_anything.v2 import (
    RELEASED_PREPROCESSING,
    DptPreprocessing,
    load_dpt_preprocessing,
)
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from tests.conftest import ASSETS

PHOTOS = ["chelsea.jpg", "astronaut.png", "coffee.png", "rocket.jpg"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The family's tiny checkpoints: tiny (DA3 any-view), tiny-mono, tiny-metric, tiny-v2."""
    directory = tmp_path_factory.mktemp("depth-anything")
    written = write_tiny(directory)
    return {variant: directory / subdir for variant, subdir in written.items()}


@pytest.fixture(scope="module")
def pool(checkpoints: dict[str, Path]) -> Iterator[ModelPool]:
    variants = {name: VariantSpec(name, str(path)) for name, path in checkpoints.items()}
    config = PoolConfig(
        device="cpu",
        variants={"depth-anything": VariantTable("tiny", variants)},
        # Parity with transformers is float32: on a CPU with bf16 units, auto may pick bf16.
        dtype="float32",
    )
    pool = ModelPool(default_registry(), config)
    yield pool
    asyncio.run(pool.close())


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


def infer(pool: ModelPool, variant: str, images: list[Image.Image], **options: Any) -> list:
    request = DepthAnythingOptions(**options)
    return asyncio.run(pool.infer("depth-anything", variant, images, request)).results


def resized(depth: torch.Tensor, image: Image.Image, mode: str = "bilinear") -> np.ndarray:
    """An (h, w) map resized to the image as the service does (``resize_depth``, which
    :func:`test_resize_depth_gives_transformers_interpolation` holds to ``F.interpolate``)."""
    return resize_depth(depth.float().numpy(), image.width, image.height, mode)


@torch.no_grad()
def raw_da3(checkpoint: Path, image: Image.Image):  # noqa: ANN201 - Da3Output
    network, _ = load_da3(checkpoint)
    return network(preprocess_da3(np.asarray(image))[None])


# -- pre-processing ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PHOTOS, "camera.png"])
def test_v2_preprocessing_matches_transformers_processor(name: str) -> None:
    from transformers import DPTImageProcessorPil

    image = photo(name)
    reference = DPTImageProcessorPil(**RELEASED_PREPROCESSING)(image, return_tensors="np")
    expected = reference["pixel_values"][0]
    ours = DptPreprocessing.from_config(RELEASED_PREPROCESSING)(image)
    assert ours.shape == expected.shape
    assert ours.shape[1] % 14 == 0 and ours.shape[2] % 14 == 0
    assert np.abs(ours - expected).max() <= 0.02


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (518, 518), (100, 30), (3000, 1000)])
def test_v2_output_size_keeps_aspect_towards_518(size: tuple[int, int]) -> None:
    from transformers import DPTImageProcessorPil

    image = Image.new("RGB", size, (10, 200, 30))
    expected = DPTImageProcessorPil(**RELEASED_PREPROCESSING)(image, return_tensors="np")
    width, height = DptPreprocessing.from_config(RELEASED_PREPROCESSING).output_size(*size)
    assert expected["pixel_values"].shape[2:] == (height, width)
    assert 518 in (width, height) or min(abs(width - 518), abs(height - 518)) < 14


def test_checkpoint_kind_comes_from_config_json(checkpoints: dict[str, Path]) -> None:
    from engines.families.depth_anything.pipeline import read_network

    assert read_network(checkpoints["tiny"]) == DepthNetwork("da3", has_camera=True)
    assert read_network(checkpoints["tiny-mono"]) == DepthNetwork("da3", has_sky=True)
    assert read_network(checkpoints["tiny-metric"]) == DepthNetwork(
        "da3", metric=True, has_sky=True
    )
    assert read_network(checkpoints["tiny-v2"]) == DepthNetwork("v2")
    assert DepthNetwork.from_config({"model_name": "da3-small"}).has_camera
    assert DepthNetwork.from_config({"model_type": "depth_anything"}).relation == "inverse"
    with pytest.raises(ValueError, match="neither"):
        DepthNetwork.from_config({"model_type": "dinov2"})
    assert load_dpt_preprocessing(checkpoints["tiny-v2"]) == DptPreprocessing.from_config({})


# -- served results against the raw networks -----------------------------------------------


def test_da3_depth_confidence_intrinsics_equal_the_raw_network(
    pool: ModelPool, checkpoints: dict[str, Path]
) -> None:
    images = [photo(p) for p in PHOTOS]
    results = infer(pool, "tiny", images)
    for image, result in zip(images, results, strict=True):
        raw = raw_da3(checkpoints["tiny"], image)
        net_h, net_w = raw.depth.shape[-2:]
        expected = resized(raw.depth[0], image)
        got = np.asarray(result["depth"])
        assert got.shape == (image.height, image.width)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert (result["min"], result["max"]) == (got.min(), got.max())
        assert result["kind"] == "relative" and result["units"] is None
        assert result["relation"] == "depth"
        confidence = raw.confidence[0].double()
        assert result["confidence"]["mean"] == pytest.approx(float(confidence.mean()), rel=1e-5)
        assert result["confidence"]["min"] == pytest.approx(float(confidence.min()), rel=1e-6)
        # Intrinsics: x row scaled by W/w, y row by H/h; the principal point lands on the
        # centre of the input image.
        k = raw.intrinsics[0].double().numpy()
        scale = np.array([[image.width / net_w], [image.height / net_h], [1.0]])
        np.testing.assert_allclose(result["intrinsics"], k * scale, rtol=1e-5)
        cx, cy = result["intrinsics"][0][2], result["intrinsics"][1][2]
        assert (cx, cy) == pytest.approx((image.width / 2, image.height / 2))
        assert "sky_fraction" not in result and "focal_px" not in result


def test_mono_applies_the_sky_rule(pool: ModelPool, checkpoints: dict[str, Path]) -> None:
    image = photo("astronaut.png")
    (result,) = infer(pool, "tiny-mono", [image])
    ruled = raw_da3(checkpoints["tiny-mono"], image)  # the network applies the rule itself
    np.testing.assert_allclose(
        result["depth"], resized(ruled.depth[0], image), rtol=1e-5, atol=1e-6
    )
    network, _ = load_da3(checkpoints["tiny-mono"])
    network.sky_rule = False
    with torch.no_grad():
        bare = network(preprocess_da3(np.asarray(image))[None])
    sky = bare.sky[0] >= 0.3
    assert 10 < int(sky.sum()) < sky.numel() - 10  # the rule does apply on this photo
    fill = torch.quantile(bare.depth[0][~sky].double(), 0.99)
    assert torch.allclose(ruled.depth[0][sky].double(), fill, rtol=1e-5)
    assert not torch.allclose(bare.depth[0][sky], ruled.depth[0][sky])
    assert result["sky_fraction"] == pytest.approx(float(sky.float().mean()))
    assert result["kind"] == "relative" and "intrinsics" not in result


def test_metric_depth_in_metres_from_focal(pool: ModelPool, checkpoints: dict[str, Path]) -> None:
    image = photo("rocket.jpg")  # portrait: 427 x 640 → network 336 x 504
    raw = raw_da3(checkpoints["tiny-metric"], image)
    net_h, net_w = raw.depth.shape[-2:]
    ratio = (net_w / image.width + net_h / image.height) / 2  # input → network pixels

    (default,) = infer(pool, "tiny-metric", [image])
    assert default["kind"] == "metric" and default["units"] == "m"
    assert default["focal_source"] == "default_fov"
    # 60° horizontal: half the width over tan(30°)
    assert default["focal_px"] == pytest.approx(image.width / 2 / math.tan(math.radians(30)))
    expected = default["focal_px"] * ratio * resized(raw.depth[0], image) / 300
    np.testing.assert_allclose(default["depth"], expected, rtol=1e-5)

    (given,) = infer(pool, "tiny-metric", [image], focal_px=1000.0)
    assert given["focal_source"] == "request" and given["focal_px"] == 1000.0
    expected = 1000.0 * ratio * resized(raw.depth[0], image) / 300
    np.testing.assert_allclose(given["depth"], expected, rtol=1e-5)
    (double,) = infer(pool, "tiny-metric", [image], focal_px=2000.0)
    np.testing.assert_allclose(double["depth"], 2 * np.asarray(given["depth"]), rtol=1e-6)


def test_relative_variants_ignore_focal(pool: ModelPool) -> None:
    image = photo("coffee.png")
    (plain,) = infer(pool, "tiny", [image])
    (focal,) = infer(pool, "tiny", [image], focal_px=500.0)
    assert np.array_equal(plain["depth"], focal["depth"]) and "focal_px" not in focal


def test_v2_depth_equals_transformers(pool: ModelPool, checkpoints: dict[str, Path]) -> None:
    from transformers import DepthAnythingForDepthEstimation, DPTImageProcessorPil

    images = [photo(p) for p in ("chelsea.jpg", "rocket.jpg")]
    processor = DPTImageProcessorPil.from_pretrained(checkpoints["tiny-v2"])
    model = DepthAnythingForDepthEstimation.from_pretrained(checkpoints["tiny-v2"]).eval()
    results = infer(pool, "tiny-v2", images)
    for image, result in zip(images, results, strict=True):
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        (expected,) = processor.post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)]
        )
        got = np.asarray(result["depth"])
        assert got.shape == (image.height, image.width)
        np.testing.assert_allclose(
            got, expected["predicted_depth"].numpy(), rtol=1e-4, atol=1e-5 * float(got.max())
        )
        assert result["relation"] == "inverse" and result["kind"] == "relative"
        assert "confidence" not in result and "intrinsics" not in result


def test_batch_equals_single_images(pool: ModelPool) -> None:
    # chelsea and coffee share a network size (504 x 336): one forward of two.
    images = [photo(p) for p in ("chelsea.jpg", "rocket.jpg", "coffee.png")]
    for variant in ("tiny", "tiny-v2"):
        batched = infer(pool, variant, images)
        for image, result in zip(images, batched, strict=True):
            (single,) = infer(pool, variant, [image])
            assert (result["width"], result["height"]) == image.size
            scale = float(np.abs(single["depth"]).max())
            np.testing.assert_allclose(
                result["depth"], single["depth"], rtol=1e-4, atol=1e-5 * scale
            )


# -- PNG encoding --------------------------------------------------------------------------


def test_png_is_16_bit_and_maps_back_to_min_max(pool: ModelPool) -> None:
    image = photo("chelsea.jpg")
    (array,) = infer(pool, "tiny", [image])
    (png,) = infer(pool, "tiny", [image], output_format="png")
    assert (png["min"], png["max"]) == (array["min"], array["max"])
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(png["depth"]))) as decoded:
        assert decoded.size == image.size and decoded.mode.startswith("I;16")
    decoded_depth = png_to_depth(png["depth"], png["min"], png["max"])
    span = png["max"] - png["min"]
    assert np.abs(decoded_depth - np.asarray(array["depth"])).max() <= span / 65535


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("size", "new_size"),
    [
        ((518, 518), (512, 512)),
        ((392, 518), (427, 640)),
        ((336, 504), (640, 427)),
        ((512, 512), (256, 256)),
        ((100, 100), (37, 41)),
        ((14, 14), (4000, 100)),
        ((37, 29), (1, 1)),
    ],
)
@pytest.mark.parametrize("smooth", [True, False], ids=["smooth", "noise"])
def test_resize_depth_gives_transformers_interpolation(
    mode: str, size: tuple[int, int], new_size: tuple[int, int], smooth: bool
) -> None:
    """``post_process_depth_estimation``'s ``F.interpolate`` (align_corners False, no
    antialiasing), up and down, whatever the aspect: OpenCV places the source pixels in float32
    as torch does, rounded differently, which moves a noise map by up to ~4e-5 of its range
    where the scale is not a simple ratio (under one 16-bit PNG level, 1.5e-5, on a smooth
    one)."""
    noise = np.random.default_rng(0).random(size, dtype=np.float32)
    depth = noise.cumsum(axis=1) if smooth else noise
    expected = F.interpolate(
        torch.from_numpy(depth)[None, None], size=new_size, mode=mode, align_corners=False
    )[0, 0].numpy()
    got = resize_depth(depth, new_size[1], new_size[0], mode)
    assert got.shape == new_size and got.dtype == np.float32
    tolerance = (1.5e-5 if smooth else 1e-4) * float(np.ptp(depth))
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("shape", [(4000, 37), (3, 70_000), (1, 1), (427, 640)])
def test_png_levels_are_the_formula_exactly(shape: tuple[int, int]) -> None:
    """``round((d - low) / (high - low) * 65535)`` in float64, clipped, whatever the map's shape
    (the levels are computed in blocks of rows: several blocks and a partial last one, rows
    wider than a block, one pixel); OpenCV's PNG decodes to them in Pillow, as 16-bit."""
    depth = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 40 + 3
    low, high = float(np.quantile(depth, 0.01)), float(np.quantile(depth, 0.99))
    if depth.size == 1:
        low, high = float(depth[0, 0]) - 1, float(depth[0, 0]) + 0.3
    scaled = (depth.astype(np.float64) - low) / (high - low) * 65535
    expected = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(depth_to_png(depth, low, high)))) as decoded:
        assert decoded.mode.startswith("I;16") and decoded.size == shape[::-1]
        np.testing.assert_array_equal(np.asarray(decoded), expected)
    assert 0 in expected and 65535 in expected or depth.size == 1  # both clips were exercised


def test_png_of_a_constant_map_is_zero() -> None:
    encoded = depth_to_png(np.full((3, 4), 2.5, np.float32), 2.5, 2.5)
    np.testing.assert_array_equal(png_to_depth(encoded, 2.5, 2.5), np.full((3, 4), 2.5))


def test_default_focal_is_60_degrees() -> None:
    assert default_focal_px(200) == pytest.approx(100 / math.tan(math.pi / 6))


# -- export --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "tiny-mono", "tiny-v2"])
def test_exported_graph_follows_the_input_size(
    checkpoints: dict[str, Path], variant: str, tmp_path: Path
) -> None:
    """Traced at one size, the graph runs at others (batch, height and width are dynamic)."""
    import onnxruntime as ort

    from export.onnx_export import graph_module

    family = DepthAnythingFamily()
    spec = VariantSpec(variant, str(checkpoints[variant]))
    pipeline = family.load_torch(LoadRequest(spec, "cpu", "float32", 1))
    graph = EXPORT.graphs(pipeline)[0]  # "model"; any-view checkpoints add "scene"
    assert graph.name == "model"
    example = torch.randn(2, 3, 98, 126)
    module = graph_module(
        pipeline.core.module, pipeline.core.graphs["model"], ["pixel_values"], graph.outputs
    )
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=graph.outputs,
            dynamic_axes=graph.dynamic_axes,
            opset_version=18,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 140, 70), (3, 3, 56, 154)]:
        pixels = np.random.default_rng(1).standard_normal(shape, np.float32)
        got = dict(zip(graph.outputs, session.run(None, {"pixel_values": pixels}), strict=True))
        want = pipeline.core.run("model", {"pixel_values": pixels})
        for name in graph.outputs:
            assert got[name].shape == want[name].shape, name
            error = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
            assert error <= 1e-4, (name, error)


def _meshgrid_uv_embedding(
    height: int, width: int, channels: int, aspect: float, like: torch.Tensor
) -> torch.Tensor:
    """The reference's UV embedding: sin/cos at every pixel of a meshgrid, permuted."""
    from engines.families.depth_anything.da3.heads import _centred_grid

    diag = (aspect**2 + 1.0) ** 0.5
    xs = _centred_grid(width, aspect / diag, like)
    ys = _centred_grid(height, 1.0 / diag, like)
    grid_u, grid_v = torch.meshgrid(xs, ys, indexing="xy")
    omega = 1.0 / 100.0 ** (torch.arange(channels // 4, dtype=torch.float32) / (channels / 4.0))

    def sincos(coords: torch.Tensor) -> torch.Tensor:
        angles = coords.reshape(-1)[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    embedding = torch.cat((sincos(grid_u), sincos(grid_v)), dim=1).float()
    return embedding.view(height, width, channels).permute(2, 0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("height", "width", "channels"), [(36, 28, 64), (252, 189, 32)])
def test_separable_uv_embedding_is_bit_identical_to_the_meshgrid_one(
    dtype: torch.dtype, height: int, width: int, channels: int
) -> None:
    from engines.families.depth_anything.da3.heads import uv_embedding_terms

    like = torch.zeros(1, dtype=dtype)
    aspect = width / height
    expected = _meshgrid_uv_embedding(height, width, channels, aspect, like)
    u, v = uv_embedding_terms(height, width, channels, aspect, like)
    assert torch.equal(u + v, expected)
    x = torch.randn(2, channels, height, width, dtype=dtype)
    added = x + (0.1 * u).to(dtype) + (0.1 * v).to(dtype)
    assert torch.equal(added, x + (0.1 * expected).to(dtype))
