"""``POST /inference/sam3`` over HTTP on the real app, serving the tiny SAM3 checkpoint."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from engines.masks import decode_mask
from tests.conftest import ASSETS, assert_clear_error, asset_b64

# pycocotools' decode trips a numpy 2 DeprecationWarning inside its own code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ["chelsea.jpg", "camera.png", "coffee.png"]
PROMPTS = ["cat", "a red dog", "person"]


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=120) as client:
        yield client


def segment(http: httpx.Client, images: list[Any], **options: Any) -> dict[str, Any]:
    response = http.post("/inference/sam3", json={"images": images, **options})
    assert response.status_code == 200, response.text
    return response.json()


def masks_of(result: dict[str, Any], fmt: str) -> list[np.ndarray]:
    return [
        decode_mask(i["mask"], fmt, result["height"], result["width"]) for i in result["instances"]
    ]


def test_response_shape_and_defaults(http: httpx.Client) -> None:
    body = segment(http, [asset_b64("chelsea.jpg")], prompts=["cat"])
    assert body["model_type"] == "sam3" and body["variant"] == "tiny"
    assert body["engine"] == "torch" and body["device"] == "cpu"
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    (result,) = body["results"]
    assert (result["width"], result["height"]) == Image.open(ASSETS / "chelsea.jpg").size
    assert result["instances"], "the tiny checkpoint scores some queries above 0.5"
    for instance in result["instances"]:
        assert set(instance) == {"prompt", "prompt_index", "score", "box", "area", "mask"}
        assert instance["score"] > 0.5  # the default threshold
        assert len(instance["mask"]) == result["height"]  # dense is the default format
        assert len(instance["mask"][0]) == result["width"]
        assert instance["area"] == int(np.asarray(instance["mask"]).sum())
        x0, y0, x1, y1 = instance["box"]
        assert x0 <= x1 and y0 <= y1


def test_every_output_format_describes_the_same_masks(http: httpx.Client) -> None:
    image = asset_b64("rocket.jpg")
    bodies = {
        fmt: segment(http, [image], prompts=PROMPTS, threshold=0.3, output_format=fmt)
        for fmt in ("dense", "rle", "polygon", "png")
    }
    results = {fmt: body["results"][0] for fmt, body in bodies.items()}
    reference = masks_of(results["dense"], "dense")
    assert len(reference) > 1
    rle = results["rle"]["instances"][0]["mask"]
    assert set(rle) == {"size", "counts"} and isinstance(rle["counts"], str)
    assert rle["size"] == [results["rle"]["height"], results["rle"]["width"]]
    for fmt, result in results.items():
        got = result["instances"]
        want = results["dense"]["instances"]
        assert [(i["prompt_index"], i["score"], i["box"], i["area"]) for i in got] == [
            (i["prompt_index"], i["score"], i["box"], i["area"]) for i in want
        ]
        for mask, expected in zip(masks_of(result, fmt), reference, strict=True):
            if fmt == "polygon":
                union = (mask | expected).sum()
                assert union == 0 or (mask & expected).sum() / union >= 0.8
            else:
                np.testing.assert_array_equal(mask, expected)


def test_images_of_different_sizes_in_one_request(http: httpx.Client) -> None:
    images = [asset_b64(p) for p in PHOTOS]
    batched = segment(http, images, prompts=PROMPTS, threshold=0.2, output_format="rle")
    sizes = [Image.open(ASSETS / p).size for p in PHOTOS]
    assert [(r["width"], r["height"]) for r in batched["results"]] == sizes
    for image, result in zip(images, batched["results"], strict=True):
        assert all(m.shape == (result["height"], result["width"]) for m in masks_of(result, "rle"))
        (single,) = segment(http, [image], prompts=PROMPTS, threshold=0.2, output_format="rle")[
            "results"
        ]
        assert len(single["instances"]) == len(result["instances"])
        key = lambda i: (i["prompt_index"], round(i["score"], 4))  # noqa: E731
        for got, want in zip(
            sorted(result["instances"], key=key), sorted(single["instances"], key=key), strict=True
        ):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            np.testing.assert_allclose(got["box"], want["box"], atol=1e-2)
            assert abs(got["area"] - want["area"]) <= max(10, want["area"] // 1000)


def test_prompt_bookkeeping(http: httpx.Client) -> None:
    prompts = ["person", "cat", "rocket", "cat"]
    body = segment(
        http, [asset_b64("astronaut.png")], prompts=prompts, threshold=0.0, output_format="rle"
    )
    (result,) = body["results"]
    instances = result["instances"]
    assert len(instances) == 4 * 5  # every query of every prompt at threshold 0
    scores = [i["score"] for i in instances]
    assert scores == sorted(scores, reverse=True)
    assert {i["prompt_index"] for i in instances} == {0, 1, 2, 3}
    for instance in instances:
        assert instance["prompt"] == prompts[instance["prompt_index"]]

    def answers(index: int) -> list[tuple[float, str]]:
        return sorted(
            (round(i["score"], 5), i["mask"]["counts"])
            for i in instances
            if i["prompt_index"] == index
        )

    assert answers(1) == answers(3)  # the same phrase twice gives the same instances
    assert answers(0) != answers(1)


def test_thresholds_filter(http: httpx.Client) -> None:
    image = [asset_b64("coffee.png")]
    everything = segment(http, image, prompts=PROMPTS, threshold=0.0, output_format="rle")
    nothing = segment(http, image, prompts=PROMPTS, threshold=1.0, output_format="rle")
    assert len(everything["results"][0]["instances"]) == 15
    assert nothing["results"][0]["instances"] == []
    loose = segment(
        http, image, prompts=["cat"], threshold=0.0, mask_threshold=0.1, output_format="rle"
    )
    tight = segment(
        http, image, prompts=["cat"], threshold=0.0, mask_threshold=0.9, output_format="rle"
    )
    loose_areas = sorted(i["area"] for i in loose["results"][0]["instances"])
    tight_areas = sorted(i["area"] for i in tight["results"][0]["instances"])
    assert all(t <= lo for t, lo in zip(tight_areas, loose_areas, strict=True))
    assert sum(tight_areas) < sum(loose_areas)


def test_sam3_is_documented(http: httpx.Client) -> None:
    root = http.get("/").json()
    assert "sam3" in root["models"]
    schema = http.get(root["openapi"]).json()
    assert "/inference/sam3" in schema["paths"]
    status = {
        (m["model_type"], m["variant"]): m for m in http.get("/models/status").json()["models"]
    }
    assert status[("sam3", "sam3")]["source"] == "facebook/sam3"
    assert status[("sam3", "sam3")]["license"] == "SAM License (gated)"


IMAGE = asset_b64("chelsea.jpg")
BAD_INPUTS = [
    ("no prompts field", {"images": [IMAGE]}, "prompts"),
    ("empty prompts list", {"images": [IMAGE], "prompts": []}, "prompts"),
    ("too many prompts", {"images": [IMAGE], "prompts": ["cat"] * 33}, "prompts"),
    ("empty prompt", {"images": [IMAGE], "prompts": ["cat", ""]}, "prompts[1]"),
    ("whitespace-only prompt", {"images": [IMAGE], "prompts": ["  \t "]}, "prompts[0]"),
    ("prompt not a string", {"images": [IMAGE], "prompts": [3]}, "prompts[0]"),
    ("too many tokens", {"images": [IMAGE], "prompts": ["dog", "cat " * 40]}, "Prompt 1"),
    (
        "unknown format",
        {"images": [IMAGE], "prompts": ["cat"], "output_format": "bmp"},
        "output_format",
    ),
    ("threshold above 1", {"images": [IMAGE], "prompts": ["cat"], "threshold": 1.5}, "threshold"),
    (
        "negative mask threshold",
        {"images": [IMAGE], "prompts": ["cat"], "mask_threshold": -0.1},
        "mask_threshold",
    ),
    ("misspelt field", {"images": [IMAGE], "prompt": ["cat"]}, "prompt"),
    ("unknown variant", {"images": [IMAGE], "prompts": ["cat"], "variant": "huge"}, "huge"),
]


@pytest.mark.parametrize(
    ("body", "needle"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_a_clear_4xx(http: httpx.Client, body: dict[str, Any], needle: str) -> None:
    response = http.post("/inference/sam3", json=body)
    assert_clear_error(response, 404 if "variant" in body else 400, needle)


def test_bad_job_is_refused_before_queueing(http: httpx.Client) -> None:
    response = http.post("/jobs/submit/sam3", json={"images": [IMAGE], "prompts": ["  "]})
    assert response.status_code == 400, response.text
    assert "prompts[0]" in response.json()["detail"]


def test_a_job_with_a_prompt_over_the_token_limit_is_refused_at_submission(
    http: httpx.Client,
) -> None:
    before = http.get("/jobs").json()["total"]
    body = {"images": [IMAGE], "prompts": ["dog", "cat " * 40]}
    response = http.post("/jobs/submit/sam3", json=body)
    assert_clear_error(response, 400, "Prompt 1")
    assert http.get("/jobs").json()["total"] == before


# -- image embeddings kept between requests ---------------------------------------------------
def embed(http: httpx.Client, images: list[Any], **extra: Any) -> dict[str, Any]:
    response = http.post("/inference/sam3/embed", json={"images": images, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def cache_counters(http: httpx.Client) -> dict[str, int]:
    models = http.get("/models/status").json()["models"]
    (entry,) = [m for m in models if (m["model_type"], m["variant"]) == ("sam3", "tiny")]
    assert entry["loaded"], "the test loads it first"
    return entry["cache"]


def unique_photo() -> str:
    """A photo no other test sends: chelsea.jpg with a random pixel, as PNG base64."""
    image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
    image.putpixel((0, 0), tuple(int(v) for v in np.random.default_rng().integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_embed_answers_ids_that_stand_for_the_images(http: httpx.Client) -> None:
    images = [asset_b64("chelsea.jpg"), asset_b64("camera.png")]
    body = embed(http, images)
    ids = body["image_ids"]
    assert len(ids) == len(set(ids)) == 2 and all(len(i) == 64 for i in ids)
    assert body["expires_in_s"] == 600  # sam3_cache_ttl_s's default
    assert (body["model_type"], body["variant"], body["device"]) == ("sam3", "tiny", "cpu")
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    assert embed(http, images)["image_ids"] == ids  # the same pixels, the same ids
    options = {"prompts": PROMPTS, "threshold": 0.2, "output_format": "rle"}
    by_id = segment(http, [{"image_id": i} for i in ids], **options)
    by_pixels = segment(http, images, **options)
    assert by_id["results"] == by_pixels["results"]
    assert [(r["width"], r["height"]) for r in by_id["results"]] == [
        Image.open(ASSETS / p).size for p in ("chelsea.jpg", "camera.png")
    ]
    mixed = segment(http, [{"image_id": ids[0]}, {"data": images[1]}], **options)
    assert mixed["results"] == by_pixels["results"]


def test_status_counts_hits_and_misses(http: httpx.Client) -> None:
    embed(http, [asset_b64("coffee.png")])  # loaded, whatever ran before
    before = cache_counters(http)
    image = unique_photo()
    first = segment(http, [image], prompts=["cat"], output_format="rle")
    after_first = cache_counters(http)
    assert after_first["misses"] == before["misses"] + 1
    assert after_first["hits"] == before["hits"]
    again = segment(http, [image], prompts=["cat"], output_format="rle")
    assert again["results"] == first["results"]  # from the embedding the first one left
    segment(http, [image], prompts=["sky", "a red dog"], output_format="rle")
    after = cache_counters(http)
    assert after["hits"] == before["hits"] + 2
    assert after["misses"] == after_first["misses"]
    assert after["entries"] >= 1
    assert 0 < after["bytes"] <= after["budget_bytes"] == 2048 * 2**20  # the CPU default


def test_an_unknown_image_id_is_a_404(http: httpx.Client) -> None:
    response = http.post(
        "/inference/sam3", json={"images": [{"image_id": "0" * 64}], "prompts": ["cat"]}
    )
    assert_clear_error(response, 404, "is not in the cache (evicted or never embedded)")
    assert "POST /inference/sam3/embed" in response.json()["detail"]
    stale = http.post("/inference/sam3/embed", json={"images": [{"image_id": "feed"}]})
    assert_clear_error(stale, 404, "image_id 'feed' is not in the cache")


def test_an_image_id_for_another_model_is_a_400(http: httpx.Client) -> None:
    (image_id,) = embed(http, [asset_b64("chelsea.jpg")])["image_ids"]
    body = {"images": [{"image_id": image_id}]}
    for path in ("/inference/dinov3", "/jobs/submit/dinov3", "/inference/depth-anything"):
        response = http.post(path, json=body)
        assert_clear_error(response, 400, "image_id items are accepted only by sam3")


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"image_id": "abc", "data": IMAGE}, "exactly one of 'data', 'url' and 'image_id'"),
        ({}, "exactly one of 'data', 'url' and 'image_id'"),
        ({"image_id": ""}, "images[0].image_id"),
        ({"image_id": 7}, "images[0].image_id"),
    ],
)
def test_bad_image_id_items_are_a_400(http: httpx.Client, item: Any, needle: str) -> None:
    response = http.post("/inference/sam3", json={"images": [item], "prompts": ["cat"]})
    assert_clear_error(response, 400, needle)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 400, "images"),
        ({"images": []}, 400, "images"),
        ({"images": [IMAGE], "prompts": ["cat"]}, 400, "prompts"),
        ({"images": [IMAGE], "variant": "huge"}, 404, "huge"),
        ({"images": ["not base64!"]}, 400, "images[0]"),
        ({"images": [IMAGE] * 17}, 413, "at most 16"),
    ],
)
def test_bad_embed_requests_are_a_clear_4xx(
    http: httpx.Client, body: dict[str, Any], status: int, needle: str
) -> None:
    assert_clear_error(http.post("/inference/sam3/embed", json=body), status, needle)


def finished_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (job := http.get(f"/jobs/{job_id}").json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_a_job_takes_an_image_id(http: httpx.Client) -> None:
    (image_id,) = embed(http, [asset_b64("rocket.jpg")])["image_ids"]
    options = {"prompts": PROMPTS, "output_format": "rle"}
    submitted = http.post("/jobs/submit/sam3", json={"images": [{"image_id": image_id}], **options})
    assert submitted.status_code == 202, submitted.text
    job = finished_job(http, submitted.json()["job_id"])
    assert job["status"] == "completed", job["error"]
    by_pixels = segment(http, [asset_b64("rocket.jpg")], **options)
    assert job["result"]["results"] == by_pixels["results"]
    # The id is looked up when the job runs (the queue may wait longer than an embedding
    # lives), so an unknown one fails the job with the endpoint's detail.
    unknown = {"images": [{"image_id": "0" * 64}], **options}
    submitted = http.post("/jobs/submit/sam3", json=unknown)
    assert submitted.status_code == 202, submitted.text
    job = finished_job(http, submitted.json()["job_id"])
    assert job["status"] == "failed"
    assert "is not in the cache (evicted or never embedded)" in job["error"]


def test_openapi_documents_embed_and_image_id_items(http: httpx.Client) -> None:
    schema = http.get("/schema/openapi.json").json()
    operation = schema["paths"]["/inference/sam3/embed"]["post"]
    assert operation["tags"] == ["inference"] and "image_id" in operation["summary"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    (ref,) = [part["$ref"] for part in body["allOf"]]
    assert ref.endswith("/Sam3EmbedRequest")
    assert body["examples"] == [{"images": ["https://images.example.com/cat.jpg"]}]
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert response["$ref"].endswith("/Sam3EmbedResponse")
    components = schema["components"]["schemas"]
    assert {"image_ids", "expires_in_s"} <= set(components["Sam3EmbedResponse"]["properties"])
    item = components["Sam3ImageRef"]
    assert set(item["properties"]) == {"data", "url", "image_id"}
    assert "/inference/sam3/embed" in item["properties"]["image_id"]["description"]
    images = components["Sam3Request"]["properties"]["images"]
    assert "image_id" in images["description"]
    assert any(
        ref.get("$ref", "").endswith("/Sam3ImageRef")
        for ref in images["items"].get("oneOf", [images["items"]])
    )
