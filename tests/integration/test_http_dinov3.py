"""The real app under uvicorn: system endpoints, model management, DINOv3, bad input."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_clear_error, asset_b64

PHOTOS = ["chelsea.jpg", "astronaut.png", "coffee.png", "camera.png"]


@pytest.fixture(scope="module")
def http(live_server: str) -> httpx.Client:
    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


def embed(http: httpx.Client, images: list[str], **options: object) -> dict:
    response = http.post("/inference/dinov3", json={"images": images, **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_root_lists_models_and_docs(http: httpx.Client) -> None:
    body = http.get("/").json()
    assert body["docs"] == "/docs" and body["redoc"] == "/redoc"
    assert "dinov3" in body["models"]
    schema = http.get(body["openapi"]).json()
    for model in ("dinov3", "sam3", "grounding-dino", "depth-anything"):
        post = schema["paths"][f"/inference/{model}"]["post"]
        example = post["requestBody"]["content"]["application/json"]["schema"]["examples"][0]
        assert example["images"], model
    for page in ("/docs", "/redoc"):
        response = http.get(page)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]
        assert "Vision Models API" in response.text


def test_health_reports_resources(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok"
    assert body["device"]["cuda_available"] is False and body["device"]["gpus"] == []
    assert body["memory"]["process_rss_mb"] > 0
    assert body["jobs"]["backend"] == "memory"


def test_embedding_shape_and_normalisation(http: httpx.Client) -> None:
    body = embed(http, [asset_b64("chelsea.jpg")], pooling="cls", normalize=True)
    assert body["model_type"] == "dinov3" and body["variant"] == "tiny"
    assert body["engine"] == "torch" and body["device"] == "cpu"
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    (result,) = body["results"]
    assert result["dim"] == 32 and len(result["embedding"]) == 32
    assert np.linalg.norm(result["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert result["patch_features"] is None


def test_patch_features_on_their_grid(http: httpx.Client) -> None:
    body = embed(http, [asset_b64("coffee.png")], pooling="none", return_patch_features=True)
    (result,) = body["results"]
    assert result["embedding"] is None
    patches = result["patch_features"]
    assert patches["grid"] == [14, 14] and patches["dim"] == 32
    assert np.asarray(patches["data"]).shape == (196, 32)


def test_mean_pooling_is_mean_of_patches(http: httpx.Client) -> None:
    body = embed(
        http, [asset_b64("rocket.jpg")], pooling="mean", normalize=False, return_patch_features=True
    )
    (result,) = body["results"]
    expected = np.asarray(result["patch_features"]["data"]).mean(axis=0)
    np.testing.assert_allclose(result["embedding"], expected, rtol=1e-5, atol=1e-6)


def test_convnext_variant(http: httpx.Client) -> None:
    body = embed(
        http, [asset_b64("chelsea.jpg")], variant="tiny-convnext", return_patch_features=True
    )
    (result,) = body["results"]
    assert result["dim"] == 64
    assert result["patch_features"]["grid"] == [7, 7]  # 224 / 32


def test_batch_order_matches_single_requests(http: httpx.Client) -> None:
    images = [asset_b64(p) for p in PHOTOS]
    batched = embed(http, images, normalize=False)["results"]
    for image, result in zip(images, batched, strict=True):
        single = embed(http, [image], normalize=False)["results"][0]
        np.testing.assert_allclose(result["embedding"], single["embedding"], rtol=1e-4, atol=1e-5)
    first, second = (np.asarray(r["embedding"]) for r in batched[:2])
    assert not np.allclose(first, second)


def test_input_forms_agree(http: httpx.Client) -> None:
    raw = asset_b64("chelsea.png")
    forms = [raw, f"data:image/png;base64,{raw}", {"data": raw}]
    results = embed(http, forms)["results"]
    for result in results[1:]:
        np.testing.assert_allclose(result["embedding"], results[0]["embedding"], rtol=1e-6)


def test_model_management(http: httpx.Client) -> None:
    loaded = http.post("/models/load", json={"model_type": "dinov3", "variant": "tiny-convnext"})
    assert loaded.status_code == 200, loaded.text
    entry = loaded.json()
    assert entry["loaded"] and entry["engine"] == "torch" and entry["dtype"] == "float32"
    assert entry["memory_mb"] > 0 and entry["loaded_at"]
    again = http.post("/models/load", json={"model_type": "dinov3", "variant": "tiny-convnext"})
    assert again.json()["loaded_at"] == entry["loaded_at"]  # no-op

    status = {
        (m["model_type"], m["variant"]): m for m in http.get("/models/status").json()["models"]
    }
    assert status[("dinov3", "tiny-convnext")]["loaded"]
    assert status[("dinov3", "vits16")]["loaded"] is False
    assert status[("dinov3", "vits16")]["device"] is None

    unloaded = http.post(
        "/models/unload", json={"model_type": "dinov3", "variant": "tiny-convnext"}
    )
    assert unloaded.json() == {"unloaded": [{"model_type": "dinov3", "variant": "tiny-convnext"}]}
    assert http.post(
        "/models/unload", json={"model_type": "dinov3", "variant": "tiny-convnext"}
    ).json() == {"unloaded": []}
    embed(http, [asset_b64("chelsea.jpg")])  # lazy load of the default again
    everything = http.post("/models/unload-all").json()["unloaded"]
    assert {"model_type": "dinov3", "variant": "tiny"} in everything
    assert http.get("/health").json()["models_loaded"] == []


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_INPUTS = [
    ("malformed base64", "/inference/dinov3", {"images": ["not base64!!"]}, 400, "base64"),
    (
        "not an image",
        "/inference/dinov3",
        {"images": [base64.b64encode(b"hello world").decode()]},
        400,
        "decodable",
    ),
    ("empty list", "/inference/dinov3", {"images": []}, 400, "images"),
    (
        "misspelt field",
        "/inference/dinov3",
        {"images": [asset_b64("chelsea.jpg")], "pooling_mode": "cls"},
        400,
        "pooling_mode",
    ),
    (
        "wrong type",
        "/inference/dinov3",
        {"images": [asset_b64("chelsea.jpg")], "normalize": "yes"},
        400,
        "normalize",
    ),
    (
        "unknown pooling",
        "/inference/dinov3",
        {"images": [asset_b64("chelsea.jpg")], "pooling": "max"},
        400,
        "pooling",
    ),
    (
        "too many images",
        "/inference/dinov3",
        {"images": [asset_b64("chelsea.jpg")] * 17},
        413,
        "at most 16",
    ),
    (
        "unknown variant",
        "/inference/dinov3",
        {"images": [asset_b64("chelsea.jpg")], "variant": "vit-huge-nope"},
        404,
        "vit-huge-nope",
    ),
    ("file url", "/inference/dinov3", {"images": ["file:///etc/passwd"]}, 400, "scheme"),
    ("loopback url", "/inference/dinov3", {"images": ["http://127.0.0.1/x.png"]}, 400, "refused"),
    (
        "metadata url",
        "/inference/dinov3",
        {"images": [{"url": "http://169.254.169.254/latest/meta-data/"}]},
        400,
        "refused",
    ),
    (
        "both data and url",
        "/inference/dinov3",
        {"images": [{"data": asset_b64("chelsea.jpg"), "url": "http://example.com/a.png"}]},
        400,
        "exactly one",
    ),
    ("unknown model", "/models/load", {"model_type": "yolo"}, 404, "yolo"),
    ("cuda without gpu", "/models/load", {"model_type": "dinov3", "device": "cuda"}, 400, "CUDA"),
    (
        "onnx without artifact",
        "/models/load",
        {"model_type": "dinov3", "engine": "onnx"},
        404,
        "vision-api export",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_clear_4xx(
    http: httpx.Client, path: str, body: dict, status: int, needle: str
) -> None:
    response = http.post(path, json=body)
    assert_clear_error(response, status, needle)
    assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "not loaded"])
def test_bad_images_are_clear_4xx_whether_or_not_the_model_is_loaded(
    http: httpx.Client, loaded: bool
) -> None:
    """A loaded model's images are decoded inside the pool's job; the errors are the same."""
    if loaded:
        assert http.post("/models/load", json={"model_type": "dinov3"}).status_code == 200
    else:
        http.post("/models/unload", json={"model_type": "dinov3"})
    good = asset_b64("chelsea.jpg")
    cases = [
        ({"images": ["not base64!!"]}, 400, "images[0]: not valid base64"),
        ({"images": [good, base64.b64encode(b"hello").decode()]}, 400, "images[1]: not a"),
        ({"images": [_png(7000, 6000)]}, 413, "pixels"),
    ]
    for body, status, needle in cases:
        assert_clear_error(http.post("/inference/dinov3", json=body), status, needle)
    loaded_now = [m for m in http.get("/models/status").json()["models"] if m["loaded"]]
    # bad images do not load a model; on a loaded one they leave it serving
    assert any(m["model_type"] == "dinov3" for m in loaded_now) == loaded
    body = embed(http, [good])
    assert body["timings_ms"]["decode"] > 0  # decoded in the pool's job or before it


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/inference/dinov3", content=b'{"images": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"]


def test_pixel_limit_is_a_413(http: httpx.Client) -> None:
    # 7000 x 6000 = 42 MP, over the 40 MP default; the PNG of a blank image stays small.
    response = http.post("/inference/dinov3", json={"images": [_png(7000, 6000)]})
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


def test_unknown_route_is_a_json_404(http: httpx.Client) -> None:
    response = http.get("/inference/nothing-here")
    assert response.status_code in (404, 405)
    assert "detail" in response.json()


def encoded(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(http: httpx.Client) -> None:
    """A 2048x1536 JPEG for a 224² model decodes at 1/2 scale: the model sees those pixels."""
    photo = Image.open(io.BytesIO(base64.b64decode(asset_b64("astronaut.png")))).convert("RGB")
    jpeg = encoded(photo.resize((2048, 1536), Image.Resampling.BICUBIC), "JPEG")
    embed(http, [asset_b64("chelsea.jpg")])  # loaded: images decode where they are prepared
    shrunk = Image.open(io.BytesIO(base64.b64decode(jpeg)))
    shrunk.draft(None, (448, 448))
    assert shrunk.size == (1024, 768)
    full = Image.open(io.BytesIO(base64.b64decode(jpeg))).convert("RGB")

    def embedding(image: str, **options: object) -> np.ndarray:
        (result,) = embed(http, [image], normalize=True, **options)["results"]
        return np.asarray(result["embedding"])

    served = embedding(jpeg)
    # Sent losslessly, the same pixels give the same embedding ...
    np.testing.assert_allclose(served, embedding(encoded(shrunk.convert("RGB"), "PNG")), atol=1e-6)
    # ... and every pixel decoded gives nearly the same.
    every_pixel = embedding(encoded(full, "PNG"))
    assert float(served @ every_pixel) >= 0.999 and not np.allclose(served, every_pixel, atol=1e-6)
    # A visualisation is drawn on the image itself: every pixel decoded then.
    np.testing.assert_allclose(embedding(jpeg, visualize=True), every_pixel, atol=1e-6)
