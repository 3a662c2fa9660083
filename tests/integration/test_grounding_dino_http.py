"""``POST /inference/grounding-dino`` over HTTP on the real app, serving the tiny checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASSETS, assert_clear_error, asset_b64

PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.png", "rocket.jpg", "camera.png"]
PROMPTS = ["a person", "Rocket", "flag", "helmet", "cat"]
NUM_QUERIES = 50  # of the tiny checkpoint


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=120) as client:
        yield client


def detect(http: httpx.Client, images: list[Any], **options: Any) -> dict[str, Any]:
    response = http.post("/inference/grounding-dino", json={"images": images, **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_response_shape_and_defaults(http: httpx.Client) -> None:
    body = detect(http, [asset_b64("rocket.jpg")], prompts=PROMPTS)
    assert body["model_type"] == "grounding-dino" and body["variant"] == "tiny"
    assert body["engine"] == "torch" and body["device"] == "cpu"
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    (result,) = body["results"]
    width, height = Image.open(ASSETS / "rocket.jpg").size
    assert (result["width"], result["height"]) == (width, height)
    detections = result["detections"]
    assert detections, "the tiny checkpoint scores some queries above 0.35"
    scores = [d["score"] for d in detections]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.35  # the default
    for d in detections:
        assert set(d) == {"label", "prompt_index", "score", "box"}
        assert d["label"] == PROMPTS[d["prompt_index"]]
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


def test_images_of_different_sizes_in_one_request(http: httpx.Client) -> None:
    images = [asset_b64(p) for p in PHOTOS]
    options = {"prompts": PROMPTS, "box_threshold": 0.6, "text_threshold": 0.5}
    batched = detect(http, images, **options)["results"]
    sizes = [Image.open(ASSETS / p).size for p in PHOTOS]
    assert [(r["width"], r["height"]) for r in batched] == sizes
    for image, result in zip(images, batched, strict=True):
        (single,) = detect(http, [image], **options)["results"]
        got, want = result["detections"], single["detections"]
        assert [(d["label"], d["prompt_index"]) for d in got] == [
            (d["label"], d["prompt_index"]) for d in want
        ]
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=1e-5)
        np.testing.assert_allclose(
            np.reshape([d["box"] for d in got], (-1, 4)),
            np.reshape([d["box"] for d in want], (-1, 4)),
            atol=1e-2,
        )
    assert batched[0]["detections"] != batched[1]["detections"]


def test_prompt_bookkeeping(http: httpx.Client) -> None:
    prompts = ["  A Person ", "cat", "red flag", "Cat"]
    body = detect(
        http, [asset_b64("astronaut.png")], prompts=prompts, box_threshold=0.0, text_threshold=0.0
    )
    (result,) = body["results"]
    detections = result["detections"]
    assert len(detections) == NUM_QUERIES  # every query names some prompt at thresholds 0
    for d in detections:
        assert d["label"] == prompts[d["prompt_index"]]  # verbatim, whitespace and case kept
    assert len({d["prompt_index"] for d in detections}) > 1
    reordered = detect(
        http,
        [asset_b64("astronaut.png")],
        prompts=prompts[::-1],
        box_threshold=0.0,
        text_threshold=0.0,
    )["results"][0]["detections"]
    for d in reordered:
        assert d["label"] == prompts[::-1][d["prompt_index"]]


def test_thresholds_filter(http: httpx.Client) -> None:
    image = [asset_b64("coffee.png")]
    everything = detect(http, image, prompts=PROMPTS, box_threshold=0.0, text_threshold=0.0)
    nothing = detect(http, image, prompts=PROMPTS, box_threshold=1.0)
    some = detect(http, image, prompts=PROMPTS, box_threshold=0.6, text_threshold=0.5)
    assert len(everything["results"][0]["detections"]) == NUM_QUERIES
    assert nothing["results"][0]["detections"] == []
    kept = some["results"][0]["detections"]
    assert kept and all(d["score"] > 0.6 for d in kept)

    def key(d: dict[str, Any]) -> tuple[Any, ...]:
        return d["label"], round(d["score"], 6), tuple(np.round(d["box"], 3))

    # A stricter threshold only removes detections: the same query keeps its label and box.
    assert {key(d) for d in kept} <= {key(d) for d in everything["results"][0]["detections"]}


def test_grounding_dino_is_documented_and_managed(http: httpx.Client) -> None:
    root = http.get("/").json()
    assert "grounding-dino" in root["models"]
    schema = http.get(root["openapi"]).json()
    assert "/inference/grounding-dino" in schema["paths"]
    status = {
        (m["model_type"], m["variant"]): m for m in http.get("/models/status").json()["models"]
    }
    assert status[("grounding-dino", "base")]["source"] == "IDEA-Research/grounding-dino-base"
    assert status[("grounding-dino", "base")]["license"] == "Apache-2.0"
    assert ("grounding-dino", "mm-tiny-o365v1-goldg-v3det") in status
    loaded = http.post("/models/load", json={"model_type": "grounding_dino"})  # the alias
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["model_type"] == "grounding-dino" and loaded.json()["variant"] == "tiny"


IMAGE = asset_b64("chelsea.jpg")
BAD_INPUTS = [
    ("no prompts field", {"images": [IMAGE]}, "prompts"),
    ("empty prompts list", {"images": [IMAGE], "prompts": []}, "prompts"),
    ("too many prompts", {"images": [IMAGE], "prompts": ["cat"] * 65}, "prompts"),
    ("empty prompt", {"images": [IMAGE], "prompts": ["cat", ""]}, "prompts[1]"),
    ("whitespace-only prompt", {"images": [IMAGE], "prompts": ["  \t "]}, "prompts[0]"),
    ("prompt not a string", {"images": [IMAGE], "prompts": [3]}, "prompts[0]"),
    # 64 prompts of 3 tokens + 64 '.' + [CLS] + [SEP] = 258 tokens, over the model's 256.
    ("too many tokens", {"images": [IMAGE], "prompts": ["cat cat cat"] * 64}, "at most 256"),
    (
        "box threshold above 1",
        {"images": [IMAGE], "prompts": ["cat"], "box_threshold": 1.5},
        "box_threshold",
    ),
    (
        "negative text threshold",
        {"images": [IMAGE], "prompts": ["cat"], "text_threshold": -0.1},
        "text_threshold",
    ),
    (
        "misspelt field",
        {"images": [IMAGE], "prompts": ["cat"], "box_treshold": 0.3},
        "box_treshold",
    ),
    ("unknown variant", {"images": [IMAGE], "prompts": ["cat"], "variant": "huge"}, "huge"),
]


@pytest.mark.parametrize(
    ("body", "needle"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_a_clear_4xx(http: httpx.Client, body: dict[str, Any], needle: str) -> None:
    response = http.post("/inference/grounding-dino", json=body)
    assert_clear_error(response, 404 if "variant" in body else 400, needle)


def test_bad_job_is_refused_before_queueing(http: httpx.Client) -> None:
    response = http.post("/jobs/submit/grounding_dino", json={"images": [IMAGE], "prompts": []})
    assert response.status_code == 400, response.text
    assert "prompts" in response.json()["detail"]


def test_a_job_over_the_token_limit_is_refused_at_submission(http: httpx.Client) -> None:
    # 64 prompts of 3 tokens + 64 '.' + [CLS] + [SEP] = 258 tokens, over the model's 256: only
    # the checkpoint's tokenizer can tell, and it does before anything is queued.
    before = http.get("/jobs").json()["total"]
    body = {"images": [IMAGE], "prompts": ["cat cat cat"] * 64}
    response = http.post("/jobs/submit/grounding-dino", json=body)
    assert_clear_error(response, 400, "at most 256")
    assert http.get("/jobs").json()["total"] == before
