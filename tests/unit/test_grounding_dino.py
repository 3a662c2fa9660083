"""GroundingDINO through the pool on a tiny checkpoint, against transformers' reference."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engines.base import LoadRequest, VariantSpec
from engines.errors import InvalidInputError
from engines.families.grounding_dino.family import GroundingDinoFamily
from engines.families.grounding_dino.pipeline import GroundingDinoPipeline
from engines.families.grounding_dino.tiny import write_tiny, write_tiny_checkpoint
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from tests.conftest import ASSETS

PROMPTS = ["a person", "Rocket", "flag", "helmet", "cat"]
# Resized to (224, 224), (213, 320), (213, 320), (214, 320), (224, 224): two pairs share a shape.
PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.png", "rocket.jpg", "camera.png")


@dataclass
class Options:
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    box_threshold: float = 0.6
    text_threshold: float = 0.5


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("grounding-dino")
    return directory / write_tiny(directory)["tiny"]


@pytest.fixture
async def pool(checkpoint: Path) -> AsyncIterator[ModelPool]:
    spec = VariantSpec("tiny", str(checkpoint))
    # float32: parity with transformers; on a CPU with bf16 units, auto may pick bf16.
    config = PoolConfig(
        variants={"grounding-dino": VariantTable("tiny", {"tiny": spec})}, dtype="float32"
    )
    pool = ModelPool(default_registry(), config)
    yield pool
    await pool.close()


# -- the reference ------------------------------------------------------------------------
class Reference:
    """transformers' model, processor and post-processing for one checkpoint."""

    def __init__(self, checkpoint: Path, model_cls: Any = None) -> None:
        from transformers import (
            AutoTokenizer,
            GroundingDinoForObjectDetection,
            GroundingDinoImageProcessorPil,
            GroundingDinoProcessor,
        )

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.processor = GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessorPil.from_pretrained(checkpoint),
            tokenizer=self.tokenizer,
        )
        self.model = (model_cls or GroundingDinoForObjectDetection).from_pretrained(checkpoint)
        self.model.eval()

    def prompt_of_token(self, prompts: list[str], input_ids: list[int]) -> list[int]:
        """Prompt index per token, from tokenising each prompt alone (-1: CLS, SEP, '.')."""
        owners, ids = [-1], [101]
        for index, prompt in enumerate(prompts):
            own = self.tokenizer(prompt.strip().lower(), add_special_tokens=False)["input_ids"]
            ids += [*own, 1012]
            owners += [index] * len(own) + [-1]
        assert ids + [102] == input_ids  # the processor joined the prompts as we expect
        return [*owners, -1]

    def detect(
        self, images: list[Image.Image], options: Options
    ) -> list[list[tuple[str, int, float, list[float]]]]:
        """Reference detections per image: (label, prompt_index, score, box), by score.

        The reference labels a box with every token above text_threshold decoded into one
        string; the served label is the prompt owning the most probable of those tokens, so
        that is what we derive here from the same probabilities (boxes without such a token
        are dropped), independently of the served code's offset mapping.
        """
        inputs = self.processor(
            images=images, text=[options.prompts] * len(images), return_tensors="pt"
        )
        with torch.inference_mode():
            out = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            out,
            inputs["input_ids"],
            threshold=options.box_threshold,
            text_threshold=options.text_threshold,
            target_sizes=[(im.height, im.width) for im in images],
        )
        length = inputs["input_ids"].shape[1]
        owners = self.prompt_of_token(options.prompts, inputs["input_ids"][0].tolist())
        expected = []
        for image, logits, result in zip(images, out.logits, results, strict=True):
            probs = logits[:, :length].sigmoid()
            kept = torch.nonzero(probs.max(dim=-1).values > options.box_threshold)[:, 0]
            assert len(kept) == len(result["scores"])
            found = []
            for query, score, box in zip(kept, result["scores"], result["boxes"], strict=True):
                naming = [
                    (float(probs[query, t]), owners[t])
                    for t in range(length)
                    if owners[t] >= 0 and probs[query, t] > options.text_threshold
                ]
                if not naming:
                    continue
                index = max(naming)[1]
                x0, y0, x1, y1 = box.tolist()
                clipped = [
                    min(max(x0, 0), image.width),
                    min(max(y0, 0), image.height),
                    min(max(x1, 0), image.width),
                    min(max(y1, 0), image.height),
                ]
                found.append((options.prompts[index], index, float(score), clipped))
            found.sort(key=lambda d: -d[2])
            expected.append(found)
        return expected


def assert_same_detections(
    served: dict[str, Any], expected: list[tuple[str, int, float, list[float]]], atol: float
) -> None:
    got = served["detections"]
    assert len(got) == len(expected)
    assert [d["prompt_index"] for d in got] == [e[1] for e in expected]
    assert [d["label"] for d in got] == [e[0] for e in expected]
    np.testing.assert_allclose([d["score"] for d in got], [e[2] for e in expected], atol=atol)
    np.testing.assert_allclose(
        np.asarray([d["box"] for d in got]).reshape(-1, 4),
        np.asarray([e[3] for e in expected]).reshape(-1, 4),
        atol=atol * 1000,
    )


# -- through the pool ---------------------------------------------------------------------
async def test_served_detections_equal_transformers(pool: ModelPool, checkpoint: Path) -> None:
    reference = Reference(checkpoint)
    options = Options()
    for name in ("astronaut.jpg", "rocket.jpg"):
        image = photo(name)
        (expected,) = reference.detect([image], options)
        outcome = await pool.infer("grounding-dino", None, [image], options)
        (result,) = outcome.results
        assert (result["width"], result["height"]) == image.size
        assert 0 < len(result["detections"]) < 50  # thresholds bite: some kept, some not
        assert_same_detections(result, expected, atol=1e-5)
        scores = [d["score"] for d in result["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in result["detections"]:
            assert d["label"] == PROMPTS[d["prompt_index"]]  # whole prompts, verbatim
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height


async def test_several_sizes_in_one_call_equal_single_calls(pool: ModelPool) -> None:
    pipeline = (await pool.load("grounding-dino")).pipeline
    assert isinstance(pipeline, GroundingDinoPipeline) and not pipeline.pad_batches  # CPU
    images = [photo(name) for name in PHOTOS]
    options = Options()
    outcome = await pool.infer("grounding_dino", None, images, options)
    assert [(r["width"], r["height"]) for r in outcome.results] == [im.size for im in images]
    labels = set()
    for image, batched in zip(images, outcome.results, strict=True):
        (single,) = (await pool.infer("grounding-dino", "tiny", [image], options)).results
        expected = [
            (d["label"], d["prompt_index"], d["score"], d["box"]) for d in single["detections"]
        ]
        assert_same_detections(batched, expected, atol=1e-5)
        labels |= {d["label"] for d in batched["detections"]}
    assert labels <= set(PROMPTS) and len(labels) > 1


async def test_text_over_the_token_limit_is_invalid(pool: ModelPool) -> None:
    with pytest.raises(InvalidInputError, match="at most 256"):
        await pool.infer("grounding-dino", None, [photo("chelsea.jpg")], Options(["cat"] * 130))
    with pytest.raises(InvalidInputError, match="empty"):
        await pool.infer("grounding-dino", None, [photo("chelsea.jpg")], Options(["cat", " "]))


async def test_prompt_tokenised_once_per_prompt_list(pool: ModelPool) -> None:
    pipeline = (await pool.load("grounding-dino")).pipeline
    assert isinstance(pipeline, GroundingDinoPipeline)
    calls = []
    tokenizer = pipeline.tokenizer

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return tokenizer(*args, **kwargs)

    pipeline.tokenizer = counting
    try:
        prompts = ["a never seen prompt", "cat"]
        await pool.infer("grounding-dino", None, [photo(n) for n in PHOTOS], Options(prompts))
        assert len(calls) == 1
    finally:
        pipeline.tokenizer = tokenizer


# -- padding (optional) ---------------------------------------------------------------------
def test_padded_batch_equals_the_reference_batch(checkpoint: Path) -> None:
    """With ``pad_batches`` images of any size share a forward, padded as the reference does."""
    family = GroundingDinoFamily()
    pipeline = family.load_torch(
        LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", "float32", 2)
    )
    pipeline.pad_batches = True
    images = [photo(name) for name in ("astronaut.jpg", "chelsea.jpg", "rocket.jpg")]
    options = Options()
    prepared = [pipeline.prepare(im, options) for im in images]
    assert len({p.batch_key for p in prepared}) == 1
    raws = pipeline.forward(prepared, options)
    results = [pipeline.postprocess(r, p, options) for r, p in zip(raws, prepared, strict=True)]
    expected = Reference(checkpoint).detect(images, options)
    for result, want in zip(results, expected, strict=True):
        assert_same_detections(result, want, atol=1e-4)


# -- MM-GroundingDINO and the tiny writer ------------------------------------------------------
def test_mm_grounding_dino_checkpoint_loads_and_matches(tmp_path: Path) -> None:
    from transformers import MMGroundingDinoForObjectDetection

    checkpoint = write_tiny_checkpoint(tmp_path / "mm", mm=True)
    pipeline = GroundingDinoFamily().load_torch(
        LoadRequest(VariantSpec("mm", str(checkpoint)), "cpu", "float32", 2)
    )
    assert type(pipeline.core.module).__name__ == "MMGroundingDinoForObjectDetection"
    image, options = photo("coffee.png"), Options(box_threshold=0.3, text_threshold=0.3)
    prepared = pipeline.prepare(image, options)
    (raw,) = pipeline.forward([prepared], options)
    result = pipeline.postprocess(raw, prepared, options)
    (expected,) = Reference(checkpoint, MMGroundingDinoForObjectDetection).detect([image], options)
    assert result["detections"]
    assert_same_detections(result, expected, atol=1e-5)


def test_write_tiny_writes_a_checkpoint_that_runs(tmp_path: Path) -> None:
    # No timing assertion here (timings belong to benchmarks/); this checks the tiny
    # checkpoint loads and runs through the real pipeline.
    written = write_tiny(tmp_path)
    assert written == {"tiny": "grounding-dino-tiny"}
    pipeline = GroundingDinoFamily().load_torch(
        LoadRequest(VariantSpec("tiny", str(tmp_path / "grounding-dino-tiny")), "cpu", "float32", 2)
    )
    pipeline.warmup()
    options = Options()
    prepared = pipeline.prepare(photo("rocket.jpg"), options)
    (raw,) = pipeline.forward([prepared], options)
    result = pipeline.postprocess(raw, prepared, options)
    assert (result["width"], result["height"]) == (640, 427)


@contextlib.contextmanager
def loaded_in_pool(checkpoint: Path, **settings: Any) -> Iterator[Any]:
    """The tiny checkpoint loaded by a pool with ``settings``; the pool closed afterwards."""
    spec = VariantSpec("tiny", str(checkpoint))
    variants = {"grounding-dino": VariantTable("tiny", {"tiny": spec})}
    pool = ModelPool(default_registry(), PoolConfig(variants=variants, **settings))
    try:
        yield asyncio.run(pool.load("grounding-dino"))
    finally:
        asyncio.run(pool.close())


def test_cpu_bf16_check_keeps_float32(checkpoint: Path) -> None:
    """GroundingDINO has no bf16 check: float32 even where bf16 would be tried (family.py)."""
    with loaded_in_pool(checkpoint, cpu_bf16="check") as model:
        assert model.dtype == "float32"
        assert model.dtype_reason == "float32: auto on CPU (this family has no bf16 check)"


def test_configured_bf16_on_cpu_still_runs_float32(checkpoint: Path) -> None:
    """transformers' own bf16 GroundingDINO gives NaN logits on CPU: float32, and why."""
    from engines.families.grounding_dino.options import GroundingDinoOptions

    with loaded_in_pool(checkpoint, dtype="bfloat16") as model:
        assert model.dtype == "float32"
        assert model.dtype_reason == (
            "float32: bfloat16 configured, but grounding-dino has no bf16 check on CPU "
            "(its bf16 results there are not trusted)"
        )
        image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
        options = GroundingDinoOptions(prompts=["cat"])
        raw = model.pipeline.forward([model.pipeline.prepare(image, options)], options)[0]
        assert np.isfinite(raw["logits"]).all()
