"""SAM3 through the pool on a tiny checkpoint, against transformers' model and post-processing."""

from __future__ import annotations

import ast
import inspect
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engines.base import ImageHandle, LoadRequest, VariantSpec, run_pipeline
from engines.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from engines.families.sam3.embeddings import image_id
from engines.families.sam3.family import Sam3Family, cache_budget_bytes
from engines.families.sam3.options import Sam3EmbedOptions
from engines.families.sam3.pipeline import Preprocessing, Sam3Pipeline
from engines.families.sam3.tiny import write_tiny
from engines.masks import FORMATS, decode_mask
from engines.pool import ModelPool, PoolConfig
from engines.registry import VariantTable, default_registry
from tests.conftest import ASSETS

PHOTOS = ("chelsea.jpg", "camera.png", "coffee.png")
# pycocotools' decode trips a numpy 2 DeprecationWarning inside its own code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@dataclass
class Options:
    prompts: list[str] = field(default_factory=lambda: ["cat", "a red dog", "person"])
    threshold: float = 0.5
    mask_threshold: float = 0.5
    output_format: str = "rle"


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sam3")
    return directory / write_tiny(directory)["tiny"]


@pytest.fixture(scope="module")
def reference_model(checkpoint: Path) -> Any:
    from transformers import Sam3Model

    return Sam3Model.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def reference_tokenizer(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture
async def pool(checkpoint: Path) -> AsyncIterator[ModelPool]:
    spec = VariantSpec("tiny", str(checkpoint))
    # float32: parity with transformers; on a CPU with bf16 units, auto may pick bf16.
    config = PoolConfig(variants={"sam3": VariantTable("tiny", {"tiny": spec})}, dtype="float32")
    pool = ModelPool(default_registry(), config)
    yield pool
    await pool.close()


async def pipeline_of(pool: ModelPool) -> Sam3Pipeline:
    pipeline = (await pool.load("sam3")).pipeline
    assert isinstance(pipeline, Sam3Pipeline)
    return pipeline


# -- the reference ------------------------------------------------------------------------
def reference_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """Sam3ImageProcessor's recipe: antialiased bilinear resize of the uint8 image, 1/255, ±0.5."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].float() / 255 - 0.5) / 0.5


def _reference_post_processing() -> Any:
    """transformers' own ``post_process_instance_segmentation``, taken from its source file.

    The module imports torchvision at the top, which cannot be imported here; the function
    itself needs only torch, so its source (and ``_scale_boxes``) is compiled on its own.
    """
    import transformers.models.sam3 as sam3

    source = (Path(inspect.getfile(sam3)).parent / "image_processing_sam3.py").read_text()
    tree = ast.parse(source)
    wanted: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "_scale_boxes":
            wanted.append(node)
        if isinstance(node, ast.ClassDef) and node.name == "Sam3ImageProcessor":
            wanted += [
                n
                for n in node.body
                if isinstance(n, ast.FunctionDef) and n.name == "post_process_instance_segmentation"
            ]
    assert len(wanted) == 2, "transformers' SAM3 post-processing moved; update this test"
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module(wanted, []), "image_processing_sam3.py", "exec"), namespace)  # noqa: S102
    return namespace["post_process_instance_segmentation"]


POST_PROCESS = _reference_post_processing()


def reference_instances(
    model: Any, tokenizer: Any, pixel_values: torch.Tensor, size: tuple[int, int], options: Options
) -> list[dict[str, Any]]:
    """Full forward per prompt (as Sam3Processor tokenises it) + the reference post-processing."""
    instances = []
    for index, prompt in enumerate(options.prompts):
        text = tokenizer([prompt], padding="max_length", max_length=32, return_tensors="pt")
        with torch.inference_mode():
            out = model(pixel_values=pixel_values[None], **text)
        (result,) = POST_PROCESS(
            None,
            out,
            threshold=options.threshold,
            mask_threshold=options.mask_threshold,
            target_sizes=[size],
        )
        for score, box, mask in zip(
            result["scores"], result["boxes"], result["masks"], strict=True
        ):
            instances.append(
                {
                    "prompt_index": index,
                    "score": float(score),
                    "box": box.tolist(),
                    "mask": mask.numpy().astype(bool),
                }
            )
    return instances


def served_masks(result: dict[str, Any], fmt: str) -> list[np.ndarray]:
    return [
        decode_mask(i["mask"], fmt, result["height"], result["width"]) for i in result["instances"]
    ]


def assert_same_instances(got: dict[str, Any], want: dict[str, Any], fmt: str) -> None:
    """Equal up to float noise (near-equal scores may swap places)."""
    assert len(got["instances"]) == len(want["instances"])
    candidates = list(zip(want["instances"], served_masks(want, fmt), strict=True))
    for instance, mask in zip(got["instances"], served_masks(got, fmt), strict=True):
        match, match_mask = min(
            (c for c in candidates if c[0]["prompt_index"] == instance["prompt_index"]),
            key=lambda c: (
                np.abs(np.subtract(c[0]["box"], instance["box"])).sum()
                + abs(c[0]["score"] - instance["score"])
            ),
        )
        assert instance["score"] == pytest.approx(match["score"], abs=1e-5)
        np.testing.assert_allclose(instance["box"], match["box"], atol=1e-3)
        assert np.mean(mask != match_mask) <= 1e-4


def assert_sorted(result: dict[str, Any]) -> None:
    scores = [i["score"] for i in result["instances"]]
    assert scores == sorted(scores, reverse=True)


# -- pre-processing and tokens --------------------------------------------------------------
@pytest.mark.parametrize("name", ["chelsea.jpg", "astronaut.png", "camera.png", "rocket.jpg"])
def test_preprocessing_matches_reference_recipe(checkpoint: Path, name: str) -> None:
    image = photo(name)
    recipe = Preprocessing.load(checkpoint)
    assert recipe.size == (112, 112)
    ours = torch.from_numpy(recipe(image))
    # The reference's own pixels (float rounding of the rescale and normalise only).
    assert (ours - reference_pixels(image, 112)).abs().max() <= 1e-6
    released = torch.from_numpy(Preprocessing.from_config({})(image))
    assert released.shape == (3, 1008, 1008)
    assert (released - reference_pixels(image, 1008)).abs().max() <= 1e-6


def test_preprocessing_config_locations(tmp_path: Path) -> None:
    import json

    assert Preprocessing.load(tmp_path).size == (1008, 1008)  # none: the released recipe
    settings = {"size": {"height": 224, "width": 320}, "image_mean": [0.1] * 3}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": settings}))
    combined = Preprocessing.load(tmp_path)
    assert (combined.size, combined.mean, combined.std) == ((224, 320), (0.1,) * 3, (0.5,) * 3)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    separate = Preprocessing.load(tmp_path)  # the dedicated file wins
    assert (separate.size, separate.mean, separate.std) == ((1008, 1008), None, None)


async def test_tokens_are_padded_like_sam3_processor(
    pool: ModelPool, reference_tokenizer: Any
) -> None:
    pipeline = await pipeline_of(pool)
    prompts = ["cat", "a red dog", "  person  ", "Astronaut with a flag"]
    tokens = pipeline.tokenizer(prompts)
    expected = reference_tokenizer(
        prompts, padding="max_length", max_length=32, return_tensors="np"
    )
    assert tokens.input_ids.shape == tokens.attention_mask.shape == (4, 32)
    np.testing.assert_array_equal(tokens.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(tokens.attention_mask, expected["attention_mask"])
    assert pipeline.tokenizer(list(prompts)) is tokens  # tokenised once, however many images


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], "At least one prompt"),
        (["cat", "   "], "Prompt 1 is empty"),
        (["cat", ""], "Prompt 1 is empty"),
        (["dog", " ".join(["cat"] * 30) + " on a mat"], r"Prompt 1 \('cat cat.*36 tokens.*32"),
    ],
)
async def test_bad_prompts_are_invalid_input(
    pool: ModelPool, prompts: list[str], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        await pool.infer("sam3", None, [photo("chelsea.jpg")], Options(prompts=prompts))


async def test_longest_prompt_that_fits_is_accepted(pool: ModelPool) -> None:
    fits = " ".join(["cat"] * 30)  # 30 words + start + end = 32 tokens
    outcome = await pool.infer("sam3", None, [photo("chelsea.jpg")], Options(prompts=[fits]))
    assert outcome.results[0]["width"] == 451


async def test_unknown_output_format_is_invalid_input(pool: ModelPool) -> None:
    with pytest.raises(InvalidInputError, match="bitmap"):
        await pool.infer("sam3", None, [photo("chelsea.jpg")], Options(output_format="bitmap"))


# -- equality with transformers ---------------------------------------------------------------
async def test_encode_once_equals_full_forward(
    pool: ModelPool, reference_model: Any, reference_tokenizer: Any
) -> None:
    pipeline = await pipeline_of(pool)
    options = Options(prompts=["cat", "a red dog", "person", "rocket", "sky"])
    pixels = pipeline.prepare(photo("coffee.png"), options).arrays["pixel_values"]
    tokens = pipeline.tokenizer(options.prompts)
    (embedding,) = pipeline.encode_images(pixels[None])
    ours = pipeline.core.run("decoder", {**embedding, **pipeline.encode_text(tokens)})
    text = reference_tokenizer(
        options.prompts, padding="max_length", max_length=32, return_tensors="pt"
    )
    batch = torch.from_numpy(pixels)[None].expand(len(options.prompts), -1, -1, -1)
    with torch.inference_mode():
        full = reference_model(pixel_values=batch, **text)
    for name in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits"):
        np.testing.assert_allclose(
            ours[name], full[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("threshold", [0.5, 0.0])
async def test_served_instances_equal_transformers_reference(
    pool: ModelPool, reference_model: Any, reference_tokenizer: Any, threshold: float
) -> None:
    pipeline = await pipeline_of(pool)
    options = Options(prompts=["cat", "a red dog", "person", "rocket"], threshold=threshold)
    images = [photo("chelsea.jpg"), photo("camera.png")]
    outcome = await pool.infer("sam3", None, images, options)
    for image, result in zip(images, outcome.results, strict=True):
        assert (result["width"], result["height"]) == image.size
        pixels = torch.from_numpy(pipeline.prepare(image, options).arrays["pixel_values"])
        expected = reference_instances(
            reference_model, reference_tokenizer, pixels, (image.height, image.width), options
        )
        served = result["instances"]
        assert len(served) == len(expected) > 0
        if threshold == 0.0:
            assert len(served) == len(options.prompts) * 5  # every query of every prompt
        assert_sorted(result)
        masks = served_masks(result, "rle")
        for instance, mask in zip(served, masks, strict=True):
            assert instance["prompt"] == options.prompts[instance["prompt_index"]]
            match = min(
                (e for e in expected if e["prompt_index"] == instance["prompt_index"]),
                key=lambda e: (
                    np.abs(np.subtract(e["box"], instance["box"])).sum()
                    + abs(e["score"] - instance["score"])
                ),
            )
            assert instance["score"] == pytest.approx(match["score"], abs=1e-5)
            np.testing.assert_allclose(instance["box"], match["box"], atol=1e-3)
            assert np.mean(mask != match["mask"]) <= 1e-4
            assert instance["area"] == int(mask.sum())


# -- the work done per request ---------------------------------------------------------------
async def test_each_image_is_encoded_once_whatever_the_prompts(pool: ModelPool) -> None:
    pipeline = await pipeline_of(pool)
    calls: list[tuple[str, int]] = []
    run = pipeline.core.run

    def spy(graph: str, inputs: dict[str, np.ndarray], host: bool = True) -> dict[str, np.ndarray]:
        rows = inputs["text_features"] if graph == "decoder" else next(iter(inputs.values()))
        calls.append((graph, len(rows)))
        return run(graph, inputs, host=host)

    pipeline.core.run = spy  # type: ignore[method-assign]
    try:
        prompts = [f"{c} cat" for c in ("red", "blue", "green", "white", "black")] + [
            "dog",
            "person",
            "rocket",
            "cup",
            "sky",
        ]
        images = [photo(name) for name in PHOTOS]
        await pool.infer("sam3", None, images, Options(prompts=prompts, threshold=0.0))
    finally:
        del pipeline.core.run
    vision = [n for g, n in calls if g == "vision"]
    assert vision == [3]  # the three images, resized to one shape, in one batch
    assert [n for g, n in calls if g == "text"] == [10]
    # Per image, 10 prompts in decoder chunks of 8 and 2, against the image's one encoding.
    assert [n for g, n in calls if g == "decoder"] == [8, 2] * 3


# -- bookkeeping -----------------------------------------------------------------------------
async def test_prompt_bookkeeping_across_decoder_chunks(pool: ModelPool) -> None:
    prompts = ["cat", "dog", "person", "rocket", "cup", "sky", "tree", "car", "face", "dog"]
    image = photo("astronaut.png")
    (many,) = (
        await pool.infer("sam3", None, [image], Options(prompts=prompts, threshold=0.0))
    ).results
    assert_sorted(many)
    assert {i["prompt_index"] for i in many["instances"]} == set(range(len(prompts)))
    for instance in many["instances"]:
        assert instance["prompt"] == prompts[instance["prompt_index"]]

    def of(result: dict[str, Any], index: int) -> dict[str, Any]:
        """The instances of prompt ``index``, relabelled as prompt 0."""
        instances = [i for i in result["instances"] if i["prompt_index"] == index]
        return {**result, "instances": [{**i, "prompt_index": 0} for i in instances]}

    # The same prompt at index 1 (first decoder chunk) and 9 (second) gives the same instances,
    # and each equals what a request with that prompt alone gives (up to float noise: a batched
    # decoder may flip a pixel whose probability sits on the mask threshold).
    assert_same_instances(of(many, 1), of(many, 9), "rle")
    for index in (0, 1, 9):
        alone = Options(prompts=[prompts[index]], threshold=0.0)
        (single,) = (await pool.infer("sam3", None, [image], alone)).results
        assert_same_instances(of(single, 0), of(many, index), "rle")


async def test_images_of_different_sizes_keep_input_order(pool: ModelPool) -> None:
    images = [photo(name) for name in PHOTOS]
    options = Options(threshold=0.0, output_format="png")
    outcome = await pool.infer("sam3", None, images, options)
    assert [(r["width"], r["height"]) for r in outcome.results] == [im.size for im in images]
    for image, result in zip(images, outcome.results, strict=True):
        assert all(m.shape == (image.height, image.width) for m in served_masks(result, "png"))
        (alone,) = (await pool.infer("sam3", None, [image], options)).results
        assert_same_instances(result, alone, "png")


async def test_threshold_bounds(pool: ModelPool) -> None:
    image = photo("chelsea.jpg")
    (none,) = (await pool.infer("sam3", None, [image], Options(threshold=1.0))).results
    assert none == {"width": 451, "height": 300, "instances": []}
    (some,) = (await pool.infer("sam3", None, [image], Options(threshold=0.5))).results
    assert 0 < len(some["instances"]) < 15
    assert all(i["score"] > 0.5 for i in some["instances"])


async def test_every_output_format_describes_the_same_mask(pool: ModelPool) -> None:
    image = photo("rocket.jpg")
    results = {
        fmt: (await pool.infer("sam3", None, [image], Options(output_format=fmt))).results[0]
        for fmt in FORMATS
    }
    reference = served_masks(results["rle"], "rle")
    assert reference and any(m.any() for m in reference)
    for fmt, result in results.items():
        assert [i["score"] for i in result["instances"]] == [
            i["score"] for i in results["rle"]["instances"]
        ]
        for instance, mask, expected in zip(
            result["instances"], served_masks(result, fmt), reference, strict=True
        ):
            assert instance["area"] == int(expected.sum())
            if fmt == "polygon":
                union = (mask | expected).sum()
                assert union == 0 or (mask & expected).sum() / union >= 0.8
            else:
                np.testing.assert_array_equal(mask, expected)
    dense = results["dense"]["instances"][0]["mask"]
    assert len(dense) == image.height and len(dense[0]) == image.width


# -- family and checkpoint -------------------------------------------------------------------
def test_family_is_registered_with_the_released_checkpoint() -> None:
    family = default_registry().get("sam3")
    assert isinstance(family, Sam3Family)
    assert family.default_variant == "sam3"
    spec = family.variants["sam3"]
    assert (spec.source, spec.license) == ("facebook/sam3", "SAM License (gated)")


def test_tiny_checkpoint_has_the_released_layout(checkpoint: Path) -> None:
    import json

    from transformers import AutoTokenizer

    names = {p.name for p in checkpoint.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer_config.json",
    } <= names
    processor = json.loads((checkpoint / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 112, "width": 112}
    assert processor["image_mean"] == processor["image_std"] == [0.5, 0.5, 0.5]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer("a red cat")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "a</w>",
        "red</w>",
        "cat</w>",
        "<|endoftext|>",
    ]


# -- the image-embedding cache ----------------------------------------------------------------
ENTRY_BYTES = 32 * (32 * 32 + 16 * 16 + 8 * 8) * 4  # the tiny model's three FPN levels, float32


@pytest.fixture
async def cached_pool(checkpoint: Path) -> AsyncIterator[ModelPool]:
    spec = VariantSpec("tiny", str(checkpoint))
    config = PoolConfig(
        variants={"sam3": VariantTable("tiny", {"tiny": spec})},
        image_cache_mb=1,
        image_cache_ttl_s=120,
        dtype="float32",  # ENTRY_BYTES: auto may keep bf16 embeddings on a CPU with bf16 units
    )
    pool = ModelPool(default_registry(), config)
    yield pool
    await pool.close()


@contextmanager
def graph_calls(pipeline: Sam3Pipeline) -> Iterator[list[str]]:
    """The graphs the core runs while the block runs, in order."""
    calls: list[str] = []
    run = pipeline.core.run

    def spy(graph: str, inputs: dict[str, Any], host: bool = True) -> dict[str, Any]:
        calls.append(graph)
        return run(graph, inputs, host=host)

    pipeline.core.run = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del pipeline.core.run


@contextmanager
def encoded_rows(pipeline: Sam3Pipeline) -> Iterator[list[int]]:
    """How many images each vision-encoder call encodes while the block runs, in order."""
    rows: list[int] = []
    encode = pipeline.encode_images

    def counting(pixels: np.ndarray) -> list[Any]:
        rows.append(len(pixels))
        return encode(pixels)

    pipeline.encode_images = counting  # type: ignore[method-assign]
    try:
        yield rows
    finally:
        del pipeline.encode_images


async def test_the_same_image_with_new_prompts_skips_the_vision_encoder(
    pool: ModelPool, cached_pool: ModelPool
) -> None:
    pipeline = await pipeline_of(cached_pool)
    image = photo("coffee.png")
    first = Options(prompts=["cat", "person"], threshold=0.0)
    second = Options(prompts=["a red dog", "rocket", "cup"], threshold=0.2)
    with graph_calls(pipeline) as calls:
        await cached_pool.infer("sam3", None, [image], first)
    assert calls.count("vision") == 1
    with graph_calls(pipeline) as calls:
        # Another object with the same pixels: the key is the pixels, not the object.
        (warm,) = (await cached_pool.infer("sam3", None, [image.copy()], second)).results
    assert calls == ["text", "decoder"]
    (cold,) = (await pool.infer("sam3", None, [image], second)).results  # no cache at all
    assert warm == cold  # the cached embedding is exactly the one a cold run computes
    stats = pipeline.cache_stats()
    assert (stats.entries, stats.hits, stats.misses, stats.evictions) == (1, 1, 1, 0)
    assert stats.bytes == ENTRY_BYTES and stats.budget_bytes == 2**20
    assert (await pipeline_of(pool)).cache_stats().budget_bytes == 0  # PoolConfig: off


async def test_an_image_stored_after_its_prepare_is_not_encoded_again(
    cached_pool: ModelPool,
) -> None:
    """Two requests for one new image, prepared before either forward: one encoding."""
    pipeline = await pipeline_of(cached_pool)
    image = photo("rocket.jpg")
    first, second = Options(prompts=["cat"]), Options(prompts=["rocket", "sky"])
    prepared = [pipeline.prepare(image, first), pipeline.prepare(image.copy(), second)]
    assert all("embedding" not in p.extra for p in prepared)  # both missed the cache
    with graph_calls(pipeline) as calls:
        raws = [pipeline.forward([p], o) for p, o in zip(prepared, (first, second), strict=True)]
    assert calls == ["text", "vision", "decoder", "text", "decoder"]
    stats = pipeline.cache_stats()
    assert (stats.entries, stats.hits, stats.misses) == (1, 0, 2)  # the second look: no count
    # The second request's answer is the one it gets from the cache once the image is there.
    again = await cached_pool.infer("sam3", None, [image], second)
    assert pipeline.postprocess(raws[1][0], prepared[1], second) == again.results[0]


async def test_the_same_image_twice_in_a_batch_is_encoded_once(cached_pool: ModelPool) -> None:
    pipeline = await pipeline_of(cached_pool)
    options = Options(prompts=["cat", "person"], threshold=0.0)
    image = photo("chelsea.jpg")
    batch = [pipeline.prepare(image, options), pipeline.prepare(image.copy(), options)]
    with encoded_rows(pipeline) as encoded:
        one, two = pipeline.forward(batch, options)
    assert encoded == [1]
    results = [pipeline.postprocess(r, p, options) for r, p in zip((one, two), batch, strict=True)]
    assert results[0] == results[1] and len(results[0]["instances"]) > 0


async def test_only_images_not_cached_are_encoded_in_a_mixed_batch(cached_pool: ModelPool) -> None:
    pipeline = await pipeline_of(cached_pool)
    images = [photo(name) for name in PHOTOS]
    options = Options(threshold=0.0)
    (alone,) = (await cached_pool.infer("sam3", None, [images[1]], options)).results
    with encoded_rows(pipeline) as vision_rows:
        outcome = await cached_pool.infer("sam3", None, images, options)
    assert vision_rows == [2]  # images 0 and 2; image 1 came from the cache
    assert outcome.results[1] == alone
    assert [(r["width"], r["height"]) for r in outcome.results] == [im.size for im in images]
    # Each image of the batch was cached on its own: its id answers alone what it answered.
    for image, result in zip(images, outcome.results, strict=True):
        handle = ImageHandle(image_id(image, "tiny"))
        assert (await cached_pool.infer("sam3", None, [handle], options)).results == [result]


async def test_embed_answers_ids_that_stand_for_the_image(cached_pool: ModelPool) -> None:
    pipeline = await pipeline_of(cached_pool)
    images = [photo("chelsea.jpg"), photo("camera.png")]
    with graph_calls(pipeline) as calls:
        embedded = await cached_pool.infer("sam3", None, images, Sam3EmbedOptions())
    assert calls == ["vision"]  # both images in one call; nothing decoded
    ids = [r["image_id"] for r in embedded.results]
    assert ids == [image_id(image, "tiny") for image in images]
    assert all(len(i) == 64 for i in ids)
    assert all(r["expires_in_s"] == 120 for r in embedded.results)
    assert image_id(images[0], "other") != ids[0]  # an id names one variant's embedding
    options = Options(prompts=["cat", "sky"], threshold=0.1)
    with graph_calls(pipeline) as calls:
        by_id = await cached_pool.infer("sam3", None, [ImageHandle(i) for i in ids], options)
    assert "vision" not in calls
    by_pixels = await cached_pool.infer("sam3", None, images, options)
    assert by_id.results == by_pixels.results
    assert [(r["width"], r["height"]) for r in by_id.results] == [im.size for im in images]
    again = await cached_pool.infer("sam3", None, images, Sam3EmbedOptions())
    assert [r["image_id"] for r in again.results] == ids
    stats = pipeline.cache_stats()
    assert (stats.entries, stats.misses, stats.hits) == (2, 2, 6)


async def test_an_unknown_or_evicted_id_is_not_found(checkpoint: Path) -> None:
    spec = VariantSpec("tiny", str(checkpoint))
    config = PoolConfig(
        variants={"sam3": VariantTable("tiny", {"tiny": spec})},
        image_cache_mb=1.5 * ENTRY_BYTES / 2**20,  # room for one embedding
        dtype="float32",  # ENTRY_BYTES is float32's
    )
    pool = ModelPool(default_registry(), config)
    try:
        options = Options(prompts=["cat"])
        with pytest.raises(NotFoundError, match=r"image_id 'f00' is not in the cache \(evicted"):
            await pool.infer("sam3", None, [ImageHandle("f00")], options)
        first, second = photo("chelsea.jpg"), photo("rocket.jpg")
        (kept,) = (await pool.infer("sam3", None, [first], Sam3EmbedOptions())).results
        await pool.infer("sam3", None, [second], Sam3EmbedOptions())
        with pytest.raises(NotFoundError, match="send the image again or POST /inference/sam3"):
            await pool.infer("sam3", None, [ImageHandle(kept["image_id"])], options)
        stats = (await pipeline_of(pool)).cache_stats()
        assert (stats.entries, stats.evictions, stats.bytes) == (1, 1, ENTRY_BYTES)
        # Two embeddings that cannot both stay are refused, not answered with a dead id.
        with pytest.raises(PayloadTooLargeError, match="did not stay in SAM3's embedding cache"):
            await pool.infer("sam3", None, [first, second], Sam3EmbedOptions())
    finally:
        await pool.close()


async def test_with_no_budget_nothing_is_kept(pool: ModelPool) -> None:
    pipeline = await pipeline_of(pool)
    image = photo("chelsea.jpg")
    with graph_calls(pipeline) as calls:
        for _ in range(2):
            await pool.infer("sam3", None, [image], Options())
    assert calls.count("vision") == 2
    with pytest.raises(PayloadTooLargeError, match=r"\(0 MiB, the sam3_cache_mb setting\)"):
        await pool.infer("sam3", None, [image], Sam3EmbedOptions())
    stats = pipeline.cache_stats()
    assert (stats.entries, stats.bytes, stats.budget_bytes) == (0, 0, 0)


async def test_entries_hold_hidden_states_on_the_device_and_share_positions(
    cached_pool: ModelPool,
) -> None:
    pipeline = await pipeline_of(cached_pool)
    images = [photo("chelsea.jpg"), photo("astronaut.png")]
    await cached_pool.infer("sam3", None, images, Sam3EmbedOptions())
    entries = [pipeline.cache.get(image_id(image, "tiny")) for image in images]
    assert all(e is not None for e in entries)
    first, second = entries
    assert first is not None and second is not None
    assert set(first.hidden) == set(pipeline.hidden_names)
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == 1 for t in first.hidden.values())
    assert first.nbytes == ENTRY_BYTES
    # Batched slices were copied: each entry owns exactly its bytes.
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in first.hidden.values())
    assert first.positions is second.positions
    # What makes sharing them right: the encoder gives every image the same positions.
    pixels = np.stack([pipeline.prepare(photo("rocket.jpg"), Options()).arrays["pixel_values"]])
    (fresh,) = pipeline.encode_images(pixels)
    for name in pipeline.position_names:
        assert torch.equal(fresh[name], first.positions[name])


async def test_unloading_releases_the_embeddings(cached_pool: ModelPool) -> None:
    pipeline = await pipeline_of(cached_pool)
    image = photo("chelsea.jpg")
    await cached_pool.infer("sam3", None, [image], Sam3EmbedOptions())
    entry = pipeline.cache.get(image_id(image, "tiny"))
    assert entry is not None
    tensors = [weakref.ref(t) for t in entry.hidden.values()]
    del entry, pipeline
    await cached_pool.unload("sam3")
    assert all(ref() is None for ref in tensors)


async def test_an_image_id_for_a_model_without_a_cache_is_invalid(pool: ModelPool) -> None:
    with pytest.raises(InvalidInputError, match="dinov3 takes images, not image_id items; only"):
        await pool.infer("dinov3", None, [ImageHandle("abc")], None)


def test_the_default_budget_depends_on_the_device() -> None:
    spec = VariantSpec("sam3", "facebook/sam3")
    auto = {
        device: cache_budget_bytes(LoadRequest(spec, device, "float32", 1, image_cache_mb=None))
        for device in ("cpu", "cuda:0")
    }
    assert auto == {"cpu": 2048 * 2**20, "cuda:0": 1024 * 2**20}
    assert cache_budget_bytes(LoadRequest(spec, "cpu", "float32", 1)) == 0  # off unless asked
    assert cache_budget_bytes(LoadRequest(spec, "cpu", "float32", 1, image_cache_mb=1.5)) == (
        3 * 2**19
    )


def test_cpu_bf16_check_compares_detections_and_leaves_the_cache_empty(checkpoint: Path) -> None:
    """cpu_bf16 "check" runs SAM3's gate and timing (as at load on a CPU with bf16 units)."""
    import asyncio

    spec = VariantSpec("tiny", str(checkpoint))
    config = PoolConfig(variants={"sam3": VariantTable("tiny", {"tiny": spec})}, cpu_bf16="check")
    pool = ModelPool(default_registry(), config)
    try:
        model = asyncio.run(pool.load("sam3"))
        reason = model.dtype_reason or ""
        assert reason.startswith(model.dtype) and model.dtype in ("float32", "bfloat16")
        assert "sure_matched_fraction" in reason or "was not faster" in reason, reason
        # The check's runs leave nothing behind in the embedding cache, counters included.
        stats = model.pipeline.cache_stats()
        assert stats is not None and (stats.entries, stats.hits, stats.misses) == (0, 0, 0)
        (result,) = asyncio.run(
            pool.infer("sam3", None, [photo("chelsea.jpg")], Options(prompts=["cat"]))
        ).results
        assert result["width"] == 451
    finally:
        asyncio.run(pool.close())


def test_bf16_weights_drift_little_from_float32(checkpoint: Path) -> None:
    """The gate's figures for the tiny model's real bf16 run (what the check compares)."""
    family = Sam3Family()
    images = [photo(name) for name in family.precision_photos]
    options = family.precision_options()
    runs = []
    for dtype in ("float32", "bfloat16"):
        request = LoadRequest(VariantSpec("tiny", str(checkpoint)), "cpu", dtype, 2)
        pipeline = family.load_torch(request)
        runs.append(run_pipeline(pipeline, images, options))
        pipeline.close()
    # Every query is kept, so each prompt has a top score to compare whatever the weights.
    assert {i["prompt_index"] for i in runs[0][0]["instances"]} == {0, 1}
    metrics = family.precision_metrics(*runs)
    assert set(metrics) == set(family.precision_gates)
    assert metrics["mask_iou_min"] > 0.5 and metrics["scores_max_abs_diff"] < 0.2, metrics
    assert 0 < metrics["top_score_abs_diff_max"] < 0.2, metrics
    assert family.precision_metrics(runs[0], runs[0])["scores_max_abs_diff"] == 0.0
