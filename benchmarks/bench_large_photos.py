"""Phone-camera photos: decoding a large JPEG at reduced scale against decoding every pixel.

A 12 MP photo (4032x3024) for a model that resizes it to 224² (DINOv3), ~700x518
(Depth Anything V2) or 504x378 (DA3) costs most of its request before the forward: the full
decode, then a resize that reads every decoded pixel. With ``shrink_on_load`` (the default) the
server decodes such a JPEG at 1/2, 1/4 or 1/8 scale in the DCT, keeping at least twice the
model's input per side (``engines.images.shrink_on_load``).

Two of our servers side by side on the same full-size random-weight checkpoint
(``checkpoints.py``): ``shrink`` (defaults) and ``every_pixel``
(``VISION_API_SHRINK_ON_LOAD=false``), interleaved rounds of the same requests (which server
goes first alternates) at each concurrency; optionally the seed-style baseline too
(``--baseline``, DINOv3 only: its depth answer for a 12 MP photo is a 12-million-number JSON
list). The photos: the four test photos, cropped to 4:3, enlarged to 4032x3024 with a
camera-like grain (Gaussian, sigma 4 grey levels: an enlarged photo without it is smoother
than a camera's and decodes faster), JPEG quality 90. Prints p50 latency and images per
second per server, shrink / every_pixel per round (paired) and over all rounds, the servers'
own decode and pre-processing p50s, and what the shrink changes in the answers (DINOv3: the
embedding's cosine to the every-pixel one; depth: the mean absolute difference as a share of
the map's range). ``--json OUT`` writes every figure.

    python benchmarks/bench_large_photos.py --family dinov3 --baseline
    python benchmarks/bench_large_photos.py --family depth-anything --concurrency 1 4
    python benchmarks/bench_large_photos.py --family depth-anything --variant small  # DA3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

SIZE = (4032, 3024)
SIDES = ("shrink", "every_pixel")


def camera_photo(path: Path, seed: int) -> bytes:
    """``path`` cropped to 4:3, enlarged to 4032x3024, grain added, as a quality-90 JPEG."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    width = min(image.width, image.height * 4 // 3)
    height = width * 3 // 4
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image.resize(SIZE, Image.Resampling.BICUBIC), np.float32)
    pixels += np.random.default_rng(seed).normal(0, 4, pixels.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bodies(family: str, variant: str, photos: list[bytes], ours: bool) -> list[bytes]:
    """One-image requests; depth as a 16-bit PNG from our server (a JSON list of 12 M numbers
    would be the bottleneck)."""
    extra = {"output_format": "png"} if family == "depth-anything" and ours else {}
    return [
        json.dumps({"images": [base64.b64encode(p).decode()], "variant": variant, **extra}).encode()
        for p in photos
    ]


def pixel_drift(family: str, variant: str, photo: bytes) -> dict[str, Any]:
    """What the model's input loses to the shrink, in grey levels (independent of weights).

    The variant's own pre-processing (DINOv3: 224²; Depth Anything V2: its released recipe;
    DA3: longest side 504) of the photo decoded at every pixel and at the scale the server
    picks, back to 0-255.
    """
    from PIL import Image

    from engines.base import SizeHint
    from engines.families.depth_anything.da3 import da3_input_size, preprocess_da3
    from engines.families.depth_anything.v2 import DptPreprocessing
    from engines.families.dinov3.pipeline import DEFAULT_PREPROCESSING, Preprocessing
    from engines.images import IMAGENET_STD, SOURCE_SIZE, shrink_on_load, source_size

    recipe: Callable[[Image.Image], np.ndarray]
    std: Sequence[float] = IMAGENET_STD
    if family == "dinov3":
        dinov3 = Preprocessing.from_config(DEFAULT_PREPROCESSING)
        recipe, std = dinov3, dinov3.std or IMAGENET_STD
        hint: SizeHint = lambda w, h: dinov3.output_size(w, h)[::-1]  # noqa: E731
    elif variant == "small":
        hint = da3_input_size
        recipe = lambda image: preprocess_da3(  # noqa: E731
            np.asarray(image), source_size=source_size(image)
        ).numpy()
    else:
        v2 = DptPreprocessing.from_config({})
        recipe, std, hint = v2, v2.std or IMAGENET_STD, v2.output_size
    full = Image.open(io.BytesIO(photo)).convert("RGB")
    opened = Image.open(io.BytesIO(photo))
    source = shrink_on_load(opened, hint)
    small = opened.convert("RGB")
    small.info[SOURCE_SIZE] = source
    scale = np.asarray(std, np.float32)[:, None, None] * 255
    difference = np.abs(recipe(full) - recipe(small)) * scale
    return {
        "decoded_at": list(small.size),
        "mean_grey_levels": float(difference.mean()),
        "p99_grey_levels": float(np.percentile(difference, 99)),
        "max_grey_levels": float(difference.max()),
    }


def _server_p50(rounds: list[harness.Round], step: str) -> float:
    return harness.percentile([t[step] for r in rounds for t in r.server_ms if step in t], 50)


def _answer(family: str, body: dict[str, Any]) -> np.ndarray:
    (result,) = body["results"]
    if family == "dinov3":
        return np.asarray(result["embedding"], np.float64)
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(result["depth"]))) as png:
        levels = np.asarray(png).astype(np.float64) / 65535
    return result["min"] + levels * (result["max"] - result["min"])


async def _drift(
    client: httpx.AsyncClient, urls: dict[str, str], family: str, requests: list[bytes]
) -> list[float]:
    """Per photo: how far the shrink's answer is from the every-pixel one."""
    drift = []
    for body in requests:
        shrink, every = [
            _answer(family, (await client.post(urls[side], content=body)).json()) for side in SIDES
        ]
        if family == "dinov3":
            cosine = shrink @ every / (np.linalg.norm(shrink) * np.linalg.norm(every))
            drift.append(float(cosine))
        else:
            drift.append(float(np.abs(shrink - every).mean() / (every.max() - every.min())))
    return drift


async def _compare(
    servers: dict[str, harness.ServerProcess], args: argparse.Namespace, photos: list[bytes]
) -> dict[str, Any]:
    ours = bodies(args.family, args.variant, photos, ours=True)
    theirs = bodies(args.family, args.variant, photos, ours=False)
    urls = {name: f"{s.url}/inference/{args.family}" for name, s in servers.items()}
    requests = {name: theirs if name == "baseline" else ours for name in urls}
    result: dict[str, Any] = {"rows": {}}
    async with httpx.AsyncClient(timeout=args.request_timeout_s) as client:
        for name, url in urls.items():  # loads the model, warms every side up
            await harness.run_round(client, url, requests[name], 1, args.warmup)
        result["drift"] = await _drift(client, urls, args.family, ours)
        for concurrency in args.concurrency:
            rounds = await harness.interleaved_rounds(
                client, urls, requests, concurrency, args.rounds, args.requests, args.pause_s
            )
            row: dict[str, Any] = {}
            for name, side_rounds in rounds.items():
                row[name] = harness.summarize(side_rounds)
                for step in ("decode", "preprocess"):
                    row[name][f"server_{step}_p50_ms"] = _server_p50(side_rounds, step)
            paired_speed = [
                a.images / a.wall_s / (b.images / b.wall_s)
                for a, b in zip(rounds["shrink"], rounds["every_pixel"], strict=True)
                if a.wall_s and b.wall_s and b.images
            ]
            row["images_per_s_ratio"] = (
                row["shrink"]["images_per_s"] / row["every_pixel"]["images_per_s"]
            )
            row["paired_images_per_s_ratio_median"] = harness.percentile(paired_speed, 50)
            row["p50_ratio"] = row["every_pixel"]["p50_ms"] / row["shrink"]["p50_ms"]
            if "baseline" in row:
                row["baseline_images_per_s_ratio"] = (
                    row["shrink"]["images_per_s"] / row["baseline"]["images_per_s"]
                )
            result["rows"][str(concurrency)] = row
    return result


def _report(result: dict[str, Any], family: str) -> None:
    for pixels in result["pixel_drift"]:
        print(
            f"decoded at {pixels['decoded_at']}: the model input moves by "
            f"{pixels['mean_grey_levels']:.3f} grey levels on average (p99 "
            f"{pixels['p99_grey_levels']:.2f}, max {pixels['max_grey_levels']:.2f})"
        )
    drift = result["drift"]
    if family == "dinov3":
        print(f"\nembedding cosine, shrink vs every pixel, per photo: {min(drift):.6f} (min)")
    else:
        print(f"\ndepth mean |difference| / range, per photo: {max(drift):.5f} (max)")
    print(
        f"{'concurrency':>11}{'side':>13}{'img/s':>8}{'p50 ms':>9}{'decode':>8}{'prep':>8}"
        f"{'inference':>11}"
    )
    for concurrency, row in result["rows"].items():
        for side in ("shrink", "every_pixel", "baseline"):
            if side in row:
                s = row[side]
                print(
                    f"{concurrency:>11}{side:>13}{s['images_per_s']:>8.2f}{s['p50_ms']:>9.1f}"
                    f"{s['server_decode_p50_ms']:>8.1f}{s['server_preprocess_p50_ms']:>8.1f}"
                    f"{s['server_inference_p50_ms']:>11.1f}"
                )
        line = (
            f"{'':>11}  shrink / every_pixel: img/s {row['images_per_s_ratio']:.2f}x "
            f"(paired {row['paired_images_per_s_ratio_median']:.2f}x), p50 "
            f"{row['p50_ratio']:.2f}x faster"
        )
        if "baseline_images_per_s_ratio" in row:
            line += f"; shrink / baseline img/s {row['baseline_images_per_s_ratio']:.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["dinov3", "depth-anything"], default="dinov3")
    parser.add_argument(
        "--variant", help="default: the family's in harness.VARIANTS (depth: small is DA3-small)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=12, help="requests per side and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per concurrency")
    parser.add_argument("--warmup", type=int, default=4, help="sequential requests per side")
    parser.add_argument("--pause-s", type=float, default=0.5)
    parser.add_argument("--baseline", action="store_true", help="the seed-style server too")
    parser.add_argument("--request-timeout-s", type=float, default=900.0)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--concurrency, --requests, --rounds and --warmup must be at least 1")
    if args.baseline and args.family != "dinov3":
        parser.error("--baseline is for --family dinov3")
    args.variant = args.variant or harness.VARIANTS[args.family]
    if (args.family, args.variant) not in harness.CHECKPOINT_NAMES:
        parser.error(f"no benchmark checkpoint for {args.family} {args.variant}")
    name = harness.CHECKPOINT_NAMES[(args.family, args.variant)]
    config = checkpoints.prepare(args.checkpoints, [name])
    photos = [camera_photo(p, seed) for seed, p in enumerate(harness.PHOTOS)]
    harness.stop_on_sigterm()
    started = time.perf_counter()
    servers: dict[str, harness.ServerProcess] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as empty:
            env = {"VISION_API_ARTIFACTS_DIR": empty}  # the torch engine, out of the box
            servers["shrink"] = harness.start_ours(config, env, name="shrink")
            servers["every_pixel"] = harness.start_ours(
                config, {**env, "VISION_API_SHRINK_ON_LOAD": "false"}, name="every_pixel"
            )
            if args.baseline:
                servers["baseline"] = harness.start_baseline(
                    {args.family: checkpoints.ensure(args.checkpoints, name)}
                )
            for server in servers.values():
                server.wait_healthy(args.start_timeout_s)
            result = asyncio.run(_compare(servers, args, photos))
    finally:
        for server in servers.values():
            server.stop()
    result["pixel_drift"] = [pixel_drift(args.family, args.variant, p) for p in photos]
    _report(result, args.family)
    fields = {
        "family": args.family,
        "variant": args.variant,
        "photo": {"size": list(SIZE), "jpeg_bytes": [len(p) for p in photos]},
        "requests_per_round": args.requests,
        "rounds": args.rounds,
    }
    harness.write_report(args.json, "bench_large_photos", started, fields, result)


if __name__ == "__main__":
    main()
