"""DINOv3 pre-processing and embeddings against transformers' reference recipe."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engines.base import VariantSpec
from engines.families.dinov3.pipeline import Preprocessing, load_preprocessing
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from tests.conftest import ASSETS

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def reference_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """The HF processor's order: rescale → antialiased bilinear resize on float → normalise."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0] - MEAN) / STD


def pil_reference_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """The classic Pillow recipe (resize on uint8), a second independent reference."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(resized)).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


@dataclass
class Options:
    pooling: str = "cls"
    normalize: bool = False
    return_patch_features: bool = False


@pytest.mark.parametrize("photo", ["chelsea.jpg", "astronaut.png", "camera.png", "rocket.jpg"])
def test_preprocessing_matches_reference(tiny_models: Path, photo: str) -> None:
    image = Image.open(ASSETS / photo).convert("RGB")
    ours = torch.from_numpy(load_preprocessing(tiny_models / "dinov3-tiny")(image))
    assert ours.shape == (3, 224, 224)
    assert (ours - reference_pixels(image)).abs().max() <= 0.02
    assert (ours - pil_reference_pixels(image)).abs().mean() <= 0.02


def test_preprocessing_reads_the_checkpoint_config() -> None:
    recipe = Preprocessing.from_config(
        {"size": {"height": 256, "width": 320}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    )
    pixels = recipe(Image.new("RGB", (100, 50), (255, 0, 127)))
    assert pixels.shape == (3, 256, 320)
    np.testing.assert_allclose(pixels[:, 0, 0], [1.0, -1.0, (127 / 255 - 0.5) / 0.5], atol=1e-5)


def test_served_embedding_equals_transformers(tiny_models: Path) -> None:
    from transformers import DINOv3ViTModel

    checkpoint = tiny_models / "dinov3-tiny"
    reference = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    images = [Image.open(ASSETS / p).convert("RGB") for p in ("chelsea.jpg", "coffee.png")]
    with torch.inference_mode():
        out = reference(pixel_values=torch.stack([reference_pixels(im) for im in images]))
    pool = ModelPool(
        default_registry(),
        PoolConfig(
            variants={"dinov3": VariantTable("t", {"t": VariantSpec("t", str(checkpoint))})}
        ),
    )
    for pooling, expected in (
        ("cls", out.pooler_output),
        ("mean", out.last_hidden_state[:, 1 + 4 :].mean(dim=1)),
    ):
        outcome = asyncio.run(pool.infer("dinov3", None, images, Options(pooling=pooling)))
        for result, want in zip(outcome.results, expected, strict=True):
            got = torch.tensor(result["embedding"])
            assert F.cosine_similarity(got, want, dim=0) >= 0.999
    asyncio.run(pool.close())


def test_cpu_bf16_check_decides_with_real_figures(tiny_models: Path) -> None:
    """cpu_bf16 "check" runs the gate and the timing even without bf16 units, as at load."""
    config = PoolConfig(
        cpu_bf16="check",
        variants={
            "dinov3": VariantTable("t", {"t": VariantSpec("t", str(tiny_models / "dinov3-tiny"))})
        },
    )
    pool = ModelPool(default_registry(), config)
    model = asyncio.run(pool.load("dinov3"))
    reason = model.dtype_reason or ""
    assert model.dtype in ("float32", "bfloat16")
    assert "embedding_cosine_min" in reason or "was not faster" in reason, reason
    assert reason.startswith(model.dtype)
    entry = next(e for e in pool.status() if e["loaded"])
    assert entry["dtype"] == model.dtype and entry["dtype_reason"] == reason
    asyncio.run(pool.close())


def test_cpu_without_bf16_units_stays_float32_and_says_why(tiny_models: Path) -> None:
    from engines.devices import cpu_bf16_units

    config = PoolConfig(
        variants={
            "dinov3": VariantTable("t", {"t": VariantSpec("t", str(tiny_models / "dinov3-tiny"))})
        },
    )
    pool = ModelPool(default_registry(), config)
    model = asyncio.run(pool.load("dinov3"))
    if cpu_bf16_units():  # a CPU with bf16 units runs the check instead
        reason = model.dtype_reason or ""  # the check ran: chosen, or refused and why
        assert "bfloat16: passed" in reason or "float32: bf16" in reason, reason
    else:
        assert model.dtype == "float32"
        assert model.dtype_reason == (
            "float32: auto on CPU; no bf16 matrix units here (AVX-512 BF16, AMX)"
        )
    asyncio.run(pool.close())


def test_the_uint8_resize_setting_picks_the_resize_order(tiny_config: Path) -> None:
    """``VISION_API_UINT8_RESIZE`` (on by default) reaches the loaded pipeline: on, the 8-bit
    pixels are resized; off, the reference's float order. The embeddings differ only slightly."""
    from engines.images import IMAGENET_MEAN, IMAGENET_STD, resize_normalize
    from service.settings import Settings
    from service.wiring import build_pool

    assert Settings.load(tiny_config, environ={}).runtime.uint8_resize
    image = Image.open(ASSETS / "rocket.jpg").convert("RGB")
    embeddings = {}
    for uint8 in (True, False):
        environ = {"VISION_API_UINT8_RESIZE": str(uint8).lower(), "VISION_API_ENGINE": "torch"}
        pool = build_pool(Settings.load(tiny_config, environ=environ))
        try:
            model = asyncio.run(pool.load("dinov3"))
            prepared = model.pipeline.prepare(image, Options())
            expected = resize_normalize(
                image, (224, 224), "bilinear", 1 / 255, IMAGENET_MEAN, IMAGENET_STD, uint8=uint8
            )
            np.testing.assert_array_equal(prepared.arrays["pixel_values"], expected)
            (result,) = asyncio.run(pool.infer("dinov3", None, [image], Options())).results
            embeddings[uint8] = torch.tensor(result["embedding"])
        finally:
            asyncio.run(pool.close())
    assert not torch.allclose(embeddings[True], embeddings[False], atol=1e-6)
    assert F.cosine_similarity(embeddings[True], embeddings[False], dim=0) >= 0.999


def test_a_bicubic_recipe_keeps_the_float_order() -> None:
    """8 bits would clip a bicubic resize's overshoot: the setting applies to bilinear only."""
    from engines.images import resize_normalize

    image = Image.open(ASSETS / "astronaut.png").convert("RGB")
    config = {"resample": 3, "size": {"height": 160, "width": 160}}
    recipe = replace(Preprocessing.from_config(config), uint8_resize=True)
    expected = resize_normalize(image, (160, 160), "bicubic", 1 / 255, recipe.mean, recipe.std)
    np.testing.assert_array_equal(recipe(image), expected)
    bilinear = replace(Preprocessing.from_config({**config, "resample": 2}), uint8_resize=True)
    uint8_order = resize_normalize(
        image, (160, 160), "bilinear", 1 / 255, recipe.mean, recipe.std, uint8=True
    )
    np.testing.assert_array_equal(bilinear(image), uint8_order)


@pytest.fixture(scope="module")
def dinov3_artifacts(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.families.dinov3.family import Dinov3Family
    from export.onnx_export import ExportOptions, export_variant
    from export.parity import default_images

    out = tmp_path_factory.mktemp("dinov3-artifacts")
    spec = VariantSpec("t", str(tiny_models / "dinov3-tiny"))
    export_variant(Dinov3Family(), spec, ExportOptions(out=out, images=default_images()))
    return out


def _artifact_pool(tiny_models: Path, artifacts: Path, engine: str, cpu_bf16: str) -> ModelPool:
    spec = VariantSpec("t", str(tiny_models / "dinov3-tiny"))
    config = PoolConfig(
        engine=engine,
        artifacts_dir=artifacts,
        cpu_bf16=cpu_bf16,
        variants={"dinov3": VariantTable("t", {"t": spec})},
    )
    return ModelPool(default_registry(), config)


def test_auto_races_the_artifact_against_torch_bf16_and_keeps_what_it_measured(
    tiny_models: Path, dinov3_artifacts: Path
) -> None:
    """Under ``engine: auto`` a CPU's bf16 check also races an ONNX artifact: the faster that
    passes is served, with the figures that decided it ("check": even without bf16 units)."""
    import re

    pool = _artifact_pool(tiny_models, dinov3_artifacts, "auto", "check")
    try:
        model = asyncio.run(pool.load("dinov3"))
        reason = model.dtype_reason or ""
        timing = re.search(r"\((\d+) vs ONNX fp32 (\d+) ms on \d+ photos\)", reason)
        if model.engine == "torch":  # bf16 passed its gate against ONNX's results and was faster
            assert model.dtype == "bfloat16" and reason.startswith("bfloat16: passed"), reason
            assert timing and int(timing[1]) <= int(timing[2]), reason
            assert model.fallback_reason == "the ONNX fp32 artifact: torch bf16 ran faster"
            assert model.placement == {"model": "torch"}
        else:
            assert model.engine == "onnx" and model.dtype == "fp32", reason
            assert reason.startswith("ONNX fp32 artifact") and "; torch bf16 " in reason, reason
            assert "failed its gate" in reason or (timing and int(timing[1]) >= int(timing[2]))
            assert model.placement == {"model": "onnx"}
        (result,) = asyncio.run(
            pool.infer("dinov3", None, [Image.open(ASSETS / "rocket.jpg")], Options())
        ).results
        assert len(result["embedding"]) == result["dim"] > 0  # served by what was kept
    finally:
        asyncio.run(pool.close())


@pytest.mark.parametrize(("engine", "cpu_bf16"), [("onnx", "check"), ("auto", "off")])
def test_an_artifact_is_kept_without_a_race_when_asked_for_or_the_check_is_off(
    tiny_models: Path, dinov3_artifacts: Path, engine: str, cpu_bf16: str
) -> None:
    pool = _artifact_pool(tiny_models, dinov3_artifacts, engine, cpu_bf16)
    try:
        model = asyncio.run(pool.load("dinov3"))
        assert model.engine == "onnx" and model.dtype == "fp32"
        assert "torch bf16" not in (model.dtype_reason or "") and model.fallback_reason is None
    finally:
        asyncio.run(pool.close())


def test_a_slower_artifact_loses_the_race_to_torch_bf16(
    tiny_models: Path, dinov3_artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branch where torch bf16 wins, whatever this CPU's speeds: ONNX Runtime's runs are
    made 30 ms slower (really: a sleep inside each run), so torch bf16 is the faster."""
    import time

    from engines.onnx_runtime import OrtCore

    run = OrtCore.run

    def slower(self: OrtCore, *args: object, **kwargs: object) -> object:
        time.sleep(0.03)
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(OrtCore, "run", slower)
    pool = _artifact_pool(tiny_models, dinov3_artifacts, "auto", "check")
    try:
        model = asyncio.run(pool.load("dinov3"))
        assert model.engine == "torch" and model.dtype == "bfloat16", model.dtype_reason
        assert (model.dtype_reason or "").startswith("bfloat16: passed (embedding_cosine_min")
        assert " vs ONNX fp32 " in (model.dtype_reason or "")
        assert model.fallback_reason == "the ONNX fp32 artifact: torch bf16 ran faster"
        assert model.placement == {"model": "torch"}
        status = next(e for e in pool.status() if e["loaded"])
        assert (status["engine"], status["dtype"]) == ("torch", "bfloat16")
        outcome = asyncio.run(
            pool.infer("dinov3", None, [Image.open(ASSETS / "rocket.jpg")], Options())
        )
        assert outcome.model.engine == "torch" and len(outcome.results[0]["embedding"]) > 0
    finally:
        asyncio.run(pool.close())
