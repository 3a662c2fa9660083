"""GroundingDINO pre-processing, prompt bookkeeping and post-processing, piece by piece."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engines.errors import InvalidInputError
from engines.families.grounding_dino.detections import detections
from engines.families.grounding_dino.family import GroundingDinoFamily
from engines.families.grounding_dino.images import Preprocessing, load_preprocessing, pad_batch
from engines.families.grounding_dino.text import NO_PROMPT, encode_prompts, join_prompts
from engines.families.grounding_dino.tiny import write_tiny
from tests.conftest import ASSETS

PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.png", "rocket.jpg", "camera.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("grounding-dino")
    return directory / write_tiny(directory)["tiny"]


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def photo(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


# -- the tiny checkpoint ------------------------------------------------------------------
def test_tiny_checkpoint_layout(checkpoint: Path, tokenizer: Any) -> None:
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert "tokenizer.json" in names or "vocab.txt" in names
    ids = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    assert ids == [101, 102, 1012, 1029]
    assert tokenizer("a cat.")["input_ids"] == [
        101,
        *tokenizer.convert_tokens_to_ids(["a", "cat"]),
        1012,
        102,
    ]


def test_family_names_and_variants() -> None:
    family = GroundingDinoFamily()
    assert family.name == "grounding-dino" and family.aliases == ("grounding_dino",)
    assert family.default_variant == "tiny"
    assert family.variants["tiny"].source == "IDEA-Research/grounding-dino-tiny"
    assert family.variants["base"].source == "IDEA-Research/grounding-dino-base"
    assert family.variants["tiny"].license == "Apache-2.0"
    mm = {k: v.source for k, v in family.variants.items() if k.startswith("mm-")}
    assert mm["mm-tiny-o365v1-goldg-v3det"] == (
        "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
    )
    assert len(mm) == 8


# -- pre-processing -----------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_preprocessing_matches_reference(checkpoint: Path, name: str) -> None:
    from transformers import GroundingDinoImageProcessorPil

    image = photo(name)
    reference = GroundingDinoImageProcessorPil.from_pretrained(checkpoint)(
        images=image, return_tensors="np"
    )["pixel_values"][0]
    ours = load_preprocessing(checkpoint)(image)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 0.02
    assert np.abs(ours - reference).mean() <= 1e-4  # same Pillow resize: float rounding only


@pytest.mark.parametrize("size", [(640, 427), (1600, 300), (300, 1700), (800, 800)])
def test_released_recipe_matches_reference(size: tuple[int, int]) -> None:
    from transformers import GroundingDinoImageProcessorPil

    image = photo("rocket.jpg").resize(size)
    reference = GroundingDinoImageProcessorPil()(images=image, return_tensors="np")["pixel_values"]
    ours = Preprocessing.from_config({})(image)
    assert ours.shape == reference.shape[1:]
    assert max(ours.shape[1:]) <= 1333 and min(ours.shape[1:]) <= 800
    assert np.abs(ours - reference[0]).max() <= 0.02


def test_output_size_follows_reference_rule() -> None:
    from transformers.image_transforms import get_size_with_aspect_ratio

    recipe = Preprocessing.from_config({})
    for width, height in itertools.product([1, 17, 300, 799, 800, 801, 1333, 4000], repeat=2):
        assert recipe.output_size(width, height) == get_size_with_aspect_ratio(
            (height, width), 800, 1333
        )


def test_pad_batch_matches_reference_mask(checkpoint: Path) -> None:
    from transformers import GroundingDinoImageProcessorPil

    images = [photo("astronaut.jpg"), photo("chelsea.jpg")]
    reference = GroundingDinoImageProcessorPil.from_pretrained(checkpoint)(
        images=images, return_tensors="np"
    )
    recipe = load_preprocessing(checkpoint)
    pixels, mask = pad_batch([recipe(im) for im in images])
    assert pixels.shape == reference["pixel_values"].shape
    np.testing.assert_array_equal(mask, reference["pixel_mask"])
    assert np.abs(pixels - reference["pixel_values"]).max() <= 0.02


# -- prompts ------------------------------------------------------------------------------
def test_prompts_join_as_the_reference_processor() -> None:
    from transformers.models.grounding_dino.processing_grounding_dino import (
        _merge_candidate_labels_text,
    )

    prompts = ["A Cat", " remote control ", "dog"]
    text, spans = join_prompts(prompts)
    assert text == _merge_candidate_labels_text(prompts) == "a cat. remote control. dog."
    assert [text[s:e] for s, e in spans] == ["a cat", "remote control", "dog"]


def test_tokens_map_back_to_whole_prompts(tokenizer: Any) -> None:
    prompts = ["a Person", "flag", "st. bernard", "rocket"]
    caption = encode_prompts(prompts, tokenizer, 256)
    assert caption.text == "a person. flag. st. bernard. rocket."
    ids = caption.input_ids.tolist()
    assert ids == tokenizer(caption.text)["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    for index, prompt in enumerate(prompts):
        own = [t for t, p in zip(ids, caption.token_prompt, strict=True) if p == index]
        assert own == tokenizer(prompt.lower(), add_special_tokens=False)["input_ids"]
    # [CLS], [SEP] and the separators belong to no prompt; the "." inside "st. bernard" does.
    separators = [i for i, p in enumerate(caption.token_prompt) if p == NO_PROMPT]
    assert [ids[i] for i in separators] == [101, 1012, 1012, 1012, 1012, 102]
    assert caption.arrays(3)["input_ids"].shape == (3, len(ids))


@pytest.mark.parametrize("prompts", [[], [""], ["cat", "   "]])
def test_empty_prompts_are_invalid(tokenizer: Any, prompts: list[str]) -> None:
    with pytest.raises(InvalidInputError):
        encode_prompts(prompts, tokenizer, 256)


def test_text_over_the_token_limit_is_invalid_not_truncated(tokenizer: Any) -> None:
    # "a" + "." per prompt: 2 tokens each, plus [CLS] and [SEP].
    assert len(encode_prompts(["a"] * 127, tokenizer, 256).input_ids) == 256
    with pytest.raises(InvalidInputError, match="257 tokens"):
        encode_prompts(["a"] * 126 + ["a b"], tokenizer, 256)


# -- post-processing ----------------------------------------------------------------------
def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_detections_thresholds_labels_boxes(tokenizer: Any) -> None:
    caption = encode_prompts(["a cat", "dog"], tokenizer, 256)  # [CLS] a cat . dog . [SEP]
    assert caption.token_prompt.tolist() == [-1, 0, 0, -1, 1, -1, -1]
    probs = np.full((5, 7), 0.01)
    probs[0, [1, 2, 4]] = [0.6, 0.7, 0.65]  # cat wins on its best token (max, not sum)
    probs[1, [2, 4]] = [0.3, 0.9]  # dog, highest score
    probs[2, 3] = 0.95  # only the separator is above text_threshold: no prompt, dropped
    probs[3, 2] = 0.35  # exactly at box_threshold: not kept (strict, as the reference)
    probs[4, 1] = 0.5  # kept, but outside the image: clipped
    logits = np.vectorize(_logit)(probs).astype(np.float32)
    boxes = np.array(
        [
            [0.5, 0.5, 0.2, 0.4],
            [0.25, 0.25, 0.5, 0.5],
            [0.5, 0.5, 1, 1],
            [0.5, 0.5, 1, 1],
            [0.95, 0.0, 0.2, 0.2],
        ],
        np.float32,
    )
    at_threshold = float(np.float32(1) / (np.float32(1) + np.exp(-logits[3, 2])))
    found = detections(logits, boxes, caption, 200, 100, at_threshold, 0.25)
    assert [d["label"] for d in found] == ["dog", "a cat", "a cat"]
    assert [d["prompt_index"] for d in found] == [1, 0, 0]
    np.testing.assert_allclose([d["score"] for d in found], [0.9, 0.7, 0.5], rtol=1e-5)
    np.testing.assert_allclose(found[0]["box"], [0, 0, 100, 50], atol=1e-4)
    np.testing.assert_allclose(found[1]["box"], [80, 30, 120, 70], atol=1e-4)
    np.testing.assert_allclose(found[2]["box"], [170, 0, 200, 10], atol=1e-4)
    assert detections(logits, boxes, caption, 200, 100, 0.95, 0.25) == []
