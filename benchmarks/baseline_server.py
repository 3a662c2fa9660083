"""The baseline: these models served the obvious way, as the original product did ("seed-style").

A FastAPI app in the shape of the seed (``../shared/seed/vision-models-api-README.md``): a
``ModelManager`` that loads transformers models at start-up, Pydantic request and response
models, and synchronous ``def`` endpoints, which FastAPI runs in its thread pool, so concurrent
requests run concurrent forwards that share the cores. Per request: decode the base64 images
with Pillow, pre-process with Pillow and numpy (transformers' own Pillow processors where they
work here: DPT for Depth Anything V2, GroundingDINO; by hand where the processor needs
torchvision: DINOv3, SAM3), one eager fp32 forward per image (``attn_implementation="eager"``,
``torch.no_grad``; no batching across requests), results through ``.tolist()`` into JSON.
SAM3 runs the whole model once per prompt, vision encoder included, as the seed did.

The endpoints take and return the same shapes as ours (``service/schemas``) for what they
serve, so one load generator drives both (``bench_serving.py``). A benchmark program, not part
of the product; it needs the ``bench`` extra (``pip install -e .[bench]``).

    python benchmarks/baseline_server.py --port 8100 \
        --dinov3 /tmp/vision-bench-checkpoints/dinov3-vits16 \
        --depth-anything /tmp/vision-bench-checkpoints/depth-anything-v2-small
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

try:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field
except ImportError as exc:  # a benchmark dependency only
    raise SystemExit(
        f"baseline_server.py needs FastAPI ({exc}): pip install -e '.[bench]'"
    ) from exc

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FAMILIES = ("dinov3", "depth-anything", "grounding-dino", "sam3")


# ---- schemas (Pydantic, as the seed's schemas.py) ----


class ImagesRequest(BaseModel):
    images: list[str] = Field(min_length=1, max_length=16)
    variant: str | None = None


class Dinov3Request(ImagesRequest):
    pooling: Literal["cls", "mean", "none"] = "cls"
    normalize: bool = True
    return_patch_features: bool = False


class DepthRequest(ImagesRequest):
    output_format: Literal["array"] = "array"
    focal_px: float | None = None


class GroundingDinoRequest(ImagesRequest):
    prompts: list[str] = Field(min_length=1, max_length=64)
    box_threshold: float = Field(0.35, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)


class Sam3Request(ImagesRequest):
    prompts: list[str] = Field(min_length=1, max_length=32)
    threshold: float = Field(0.5, ge=0, le=1)
    mask_threshold: float = Field(0.5, ge=0, le=1)
    output_format: Literal["dense", "rle"] = "dense"


class Timings(BaseModel):
    decode: float
    preprocess: float
    inference: float
    postprocess: float
    total: float


class InferenceResponse(BaseModel):
    model_type: str
    variant: str
    engine: str = "torch"
    device: str = "cpu"
    timings_ms: Timings


class PatchFeatures(BaseModel):
    grid: list[int]
    dim: int
    data: list[list[float]]


class Dinov3Result(BaseModel):
    dim: int
    embedding: list[float] | None
    patch_features: PatchFeatures | None


class Dinov3Response(InferenceResponse):
    results: list[Dinov3Result]


class DepthResult(BaseModel):
    width: int
    height: int
    kind: str = "relative"
    units: str | None = None
    relation: str = "inverse"
    min: float
    max: float
    depth: list[list[float]]


class DepthResponse(InferenceResponse):
    results: list[DepthResult]


class Detection(BaseModel):
    label: str
    prompt_index: int
    score: float
    box: list[float]


class GroundingDinoResult(BaseModel):
    width: int
    height: int
    detections: list[Detection]


class GroundingDinoResponse(InferenceResponse):
    results: list[GroundingDinoResult]


class Sam3Instance(BaseModel):
    prompt: str
    prompt_index: int
    score: float
    box: list[float]
    area: int
    mask: list[list[int]] | dict[str, Any]


class Sam3Result(BaseModel):
    width: int
    height: int
    instances: list[Sam3Instance]


class Sam3Response(InferenceResponse):
    results: list[Sam3Result]


# ---- models (as the seed's models.py) ----


class ModelManager:
    """Loads each configured checkpoint once, eager fp32 on the CPU, and hands it out."""

    def __init__(self, checkpoints: dict[str, Path]) -> None:
        self.checkpoints = checkpoints
        self.models: dict[str, dict[str, Any]] = {}

    def load_all(self) -> None:
        loaders = {
            "dinov3": _load_dinov3,
            "depth-anything": _load_depth,
            "grounding-dino": _load_grounding_dino,
            "sam3": _load_sam3,
        }
        for model_type, path in self.checkpoints.items():
            self.models[model_type] = loaders[model_type](path)

    def get(self, model_type: str) -> dict[str, Any]:
        if model_type not in self.models:
            raise HTTPException(404, detail=f"Model {model_type} not loaded.")
        return self.models[model_type]


def _preprocessor_config(path: Path) -> dict[str, Any]:
    file = path / "preprocessor_config.json"
    return json.loads(file.read_text()) if file.exists() else {}


def _load_dinov3(path: Path) -> dict[str, Any]:
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(path, attn_implementation="eager").eval()
    config = _preprocessor_config(path)
    size = config.get("size", {"height": 224, "width": 224})
    return {
        "model": model,
        "size": (size["width"], size["height"]),
        "mean": np.array(config.get("image_mean", IMAGENET_MEAN), dtype=np.float32),
        "std": np.array(config.get("image_std", IMAGENET_STD), dtype=np.float32),
        "prefix": 1 + model.config.num_register_tokens,
        "patch": model.config.patch_size,
    }


def _load_depth(path: Path) -> dict[str, Any]:
    if "model_name" in json.loads((path / "config.json").read_text()):
        return _load_da3(path)
    from transformers import DepthAnythingForDepthEstimation, DPTImageProcessorPil

    model = DepthAnythingForDepthEstimation.from_pretrained(path, attn_implementation="eager")
    return {"model": model.eval(), "processor": DPTImageProcessorPil.from_pretrained(path)}


def _load_da3(path: Path) -> dict[str, Any]:
    """Depth Anything 3 in the official layout (``{"model_name": ...}``), served by the
    official package's own API (``DepthAnything3.inference``), as its README shows. It needs
    the package and its inference-time imports (torchvision, OpenCV, moviepy, pycolmap, ...),
    which our environment does not have: see ``bench_serving.py``'s docstring."""
    try:
        from depth_anything_3.api import DepthAnything3
    except ImportError as exc:
        raise SystemExit(
            f"serving {path} needs the official depth-anything-3 package and its inference "
            f"dependencies ({exc})"
        ) from exc

    model = DepthAnything3.from_pretrained(str(path)).eval()
    if os.environ.get("BASELINE_DA3_AUTOCAST") == "off":
        # The package's forward always autocasts, to float16 where torch reports no CUDA bf16
        # (any CPU): slow on CPUs without float16 arithmetic. The same forward in float32.
        def forward_fp32(image: torch.Tensor, *args: Any) -> Any:
            with torch.inference_mode():
                return model.model(image, *args)

        model.forward = forward_fp32
    return {"model": model, "da3": True}


def _load_grounding_dino(path: Path) -> dict[str, Any]:
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    model = GroundingDinoForObjectDetection.from_pretrained(path, attn_implementation="eager")
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
    )
    return {"model": model.eval(), "processor": processor}


def _load_sam3(path: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer, Sam3Model

    model = Sam3Model.from_pretrained(path, attn_implementation="eager").eval()
    config = _preprocessor_config(path)
    size = config.get("size", {"height": 1008, "width": 1008})
    return {
        "model": model,
        "tokenizer": AutoTokenizer.from_pretrained(path),
        "size": (size["width"], size["height"]),
        "mean": np.array(config.get("image_mean", [0.5] * 3), dtype=np.float32),
        "std": np.array(config.get("image_std", [0.5] * 3), dtype=np.float32),
    }


# ---- utils (as the seed's utils.py) ----


def decode_image(data: str) -> Image.Image:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, ValueError) as exc:
        raise HTTPException(400, detail=f"Invalid image: {exc}") from exc


def to_tensor(image: Image.Image, size: tuple[int, int], mean: Any, std: Any) -> torch.Tensor:
    """Resize (bilinear), 1/255, normalise, CHW, batch of one."""
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    pixels = (pixels - mean) / std
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).unsqueeze(0)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


# ---- inference ----


def run_dinov3(entry: dict[str, Any], images: list[Image.Image], request: Dinov3Request) -> tuple:
    started = time.perf_counter()
    pixel_values = torch.cat(
        [to_tensor(im, entry["size"], entry["mean"], entry["std"]) for im in images]
    )
    preprocess = _ms(started)
    started = time.perf_counter()
    with torch.no_grad():
        outputs = entry["model"](pixel_values=pixel_values)
    inference = _ms(started)
    started = time.perf_counter()
    patches = outputs.last_hidden_state[:, entry["prefix"] :]
    grid = [pixel_values.shape[2] // entry["patch"], pixel_values.shape[3] // entry["patch"]]
    results = []
    for i in range(len(images)):
        embedding = None
        if request.pooling == "cls":
            embedding = outputs.pooler_output[i]
        elif request.pooling == "mean":
            embedding = patches[i].mean(dim=0)
        if embedding is not None and request.normalize:
            embedding = torch.nn.functional.normalize(embedding, dim=0)
        features = None
        if request.return_patch_features:
            features = {"grid": grid, "dim": patches.shape[-1], "data": patches[i].tolist()}
        results.append(
            {
                "dim": patches.shape[-1],
                "embedding": None if embedding is None else embedding.tolist(),
                "patch_features": features,
            }
        )
    return results, preprocess, inference, _ms(started)


def run_depth(entry: dict[str, Any], images: list[Image.Image], request: DepthRequest) -> tuple:
    if entry.get("da3"):
        return run_da3(entry, images)
    preprocess = inference = postprocess = 0.0
    results = []
    for image in images:
        started = time.perf_counter()
        inputs = entry["processor"](images=image, return_tensors="pt")
        preprocess += _ms(started)
        started = time.perf_counter()
        with torch.no_grad():
            outputs = entry["model"](**inputs)
        inference += _ms(started)
        started = time.perf_counter()
        depth = entry["processor"].post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)]
        )[0]["predicted_depth"]
        results.append(
            {
                "width": image.width,
                "height": image.height,
                "min": depth.min().item(),
                "max": depth.max().item(),
                "depth": depth.tolist(),
            }
        )
        postprocess += _ms(started)
    return results, preprocess, inference, postprocess


def run_da3(entry: dict[str, Any], images: list[Image.Image]) -> tuple:
    """One ``inference([image])`` call per image (its pre-processing, forward and output
    conversion: counted as inference), the depth resized to the image bilinearly."""
    inference = postprocess = 0.0
    results = []
    for image in images:
        started = time.perf_counter()
        prediction = entry["model"].inference([image])
        inference += _ms(started)
        started = time.perf_counter()
        depth = torch.nn.functional.interpolate(
            torch.from_numpy(prediction.depth[:1]).unsqueeze(1),
            size=(image.height, image.width),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        results.append(
            {
                "width": image.width,
                "height": image.height,
                "relation": "depth",
                "min": depth.min().item(),
                "max": depth.max().item(),
                "depth": depth.tolist(),
            }
        )
        postprocess += _ms(started)
    return results, 0.0, inference, postprocess


def run_grounding_dino(
    entry: dict[str, Any], images: list[Image.Image], request: GroundingDinoRequest
) -> tuple:
    text = " ".join(p.strip().lower().rstrip(".") + "." for p in request.prompts)
    lowered = [p.strip().lower() for p in request.prompts]
    preprocess = inference = postprocess = 0.0
    results = []
    for image in images:
        started = time.perf_counter()
        inputs = entry["processor"](images=image, text=text, return_tensors="pt")
        preprocess += _ms(started)
        started = time.perf_counter()
        with torch.no_grad():
            outputs = entry["model"](**inputs)
        inference += _ms(started)
        started = time.perf_counter()
        found = entry["processor"].post_process_grounded_object_detection(
            outputs,
            inputs.input_ids,
            threshold=request.box_threshold,
            text_threshold=request.text_threshold,
            target_sizes=[(image.height, image.width)],
        )[0]
        detections = []
        for score, box, label in zip(
            found["scores"].tolist(), found["boxes"].tolist(), found["text_labels"], strict=True
        ):
            index = lowered.index(label) if label in lowered else -1
            detections.append(
                {
                    "label": request.prompts[index] if index >= 0 else label,
                    "prompt_index": index,
                    "score": score,
                    "box": box,
                }
            )
        detections.sort(key=lambda d: -d["score"])
        results.append({"width": image.width, "height": image.height, "detections": detections})
        postprocess += _ms(started)
    return results, preprocess, inference, postprocess


def run_sam3(entry: dict[str, Any], images: list[Image.Image], request: Sam3Request) -> tuple:
    model, tokenizer = entry["model"], entry["tokenizer"]
    preprocess = inference = postprocess = 0.0
    results = []
    for image in images:
        started = time.perf_counter()
        pixel_values = to_tensor(image, entry["size"], entry["mean"], entry["std"])
        preprocess += _ms(started)
        instances = []
        for index, prompt in enumerate(request.prompts):
            started = time.perf_counter()
            text = tokenizer(prompt, padding="max_length", max_length=32, return_tensors="pt")
            with torch.no_grad():  # the whole model, vision encoder included, per prompt
                outputs = model(
                    pixel_values=pixel_values,
                    input_ids=text.input_ids,
                    attention_mask=text.attention_mask,
                )
            inference += _ms(started)
            started = time.perf_counter()
            scores = outputs.pred_logits[0].sigmoid() * outputs.presence_logits[0].sigmoid()
            keep = scores > request.threshold
            if keep.any():
                masks = torch.nn.functional.interpolate(
                    outputs.pred_masks[0][keep][None],
                    size=(image.height, image.width),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                masks = masks.sigmoid() > request.mask_threshold
                scale = torch.tensor([image.width, image.height, image.width, image.height])
                boxes = outputs.pred_boxes[0][keep] * scale
                for score, box, mask in zip(
                    scores[keep].tolist(), boxes.tolist(), masks, strict=True
                ):
                    instances.append(
                        {
                            "prompt": prompt,
                            "prompt_index": index,
                            "score": score,
                            "box": box,
                            "area": int(mask.sum()),
                            "mask": _encode_mask(mask, request.output_format),
                        }
                    )
            postprocess += _ms(started)
        instances.sort(key=lambda i: -i["score"])
        results.append({"width": image.width, "height": image.height, "instances": instances})
    return results, preprocess, inference, postprocess


def _encode_mask(mask: torch.Tensor, output_format: str) -> Any:
    if output_format == "dense":
        return mask.int().tolist()
    from pycocotools import mask as coco

    rle = coco.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


# ---- server (as the seed's server.py) ----


def create_app(checkpoints: dict[str, Path]) -> FastAPI:
    manager = ModelManager(checkpoints)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.load_all()
        yield

    app = FastAPI(title="Vision Models API (seed-style baseline)", lifespan=lifespan)

    def infer(model_type: str, request: ImagesRequest, run: Any) -> dict[str, Any]:
        entry = manager.get(model_type)
        started = time.perf_counter()
        decode_started = time.perf_counter()
        images = [decode_image(data) for data in request.images]
        decode = _ms(decode_started)
        results, preprocess, inference, postprocess = run(entry, images, request)
        return {
            "model_type": model_type,
            "variant": request.variant or "default",
            "timings_ms": {
                "decode": decode,
                "preprocess": preprocess,
                "inference": inference,
                "postprocess": postprocess,
                "total": _ms(started),
            },
            "results": results,
        }

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models_loaded": sorted(manager.models)}

    @app.post("/inference/dinov3", response_model=Dinov3Response)
    def dinov3(request: Dinov3Request) -> dict[str, Any]:
        return infer("dinov3", request, run_dinov3)

    @app.post("/inference/depth-anything", response_model=DepthResponse)
    def depth_anything(request: DepthRequest) -> dict[str, Any]:
        return infer("depth-anything", request, run_depth)

    @app.post("/inference/grounding-dino", response_model=GroundingDinoResponse)
    def grounding_dino(request: GroundingDinoRequest) -> dict[str, Any]:
        return infer("grounding-dino", request, run_grounding_dino)

    @app.post("/inference/sam3", response_model=Sam3Response)
    def sam3(request: Sam3Request) -> dict[str, Any]:
        return infer("sam3", request, run_sam3)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    for family in FAMILIES:
        parser.add_argument(f"--{family}", type=Path, metavar="DIR", help=f"{family} checkpoint")
    args = parser.parse_args()
    checkpoints = {
        family: path
        for family in FAMILIES
        if (path := getattr(args, family.replace("-", "_"))) is not None
    }
    if not checkpoints:
        parser.error("give at least one checkpoint (--dinov3 DIR, --depth-anything DIR, ...)")
    import uvicorn

    uvicorn.run(create_app(checkpoints), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
