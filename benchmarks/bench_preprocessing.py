"""Pre-processing in two orders: the 8-bit pixels resized, or the rescaled float ones.

``engines.images.resize_normalize`` resizes either the float pixels after rescaling
(DINOv3's reference processor) or the 8-bit pixels with torch's vectorised uint8 kernel, then
rescales and normalises (torchvision's order for a uint8 image: SAM3's reference processor,
and DINOv3's by default, ``VISION_API_UINT8_RESIZE``). For each recipe, on the serving
benchmarks' photos (512² JPEGs, ``harness.square_photo``) and on the test photos as they are,
the two orders are timed interleaved (rounds alternate which goes first) on one torch thread,
as a helper thread or an ONNX model's compute thread runs them. Prints the p50s and float /
uint8, and what the order changes: the model input in grey levels (mean and largest
difference) and, for DINOv3 on the full-size random-weight checkpoint (``checkpoints.py``),
the embedding's cosine between the orders (fp32, transformers' ``DINOv3ViTModel``). Then
depth maps resized to the photo (V2 bicubic, DA3 bilinear): transformers' ``F.interpolate``
against ours (``cv2.resize``), timed the same way, with the largest difference as a share of
the map's range. Last, depth maps encoded as the API's 16-bit PNG: the float64 levels as
whole-map temporaries and Pillow's encoder at zlib level 1 (adaptive row filters) against ours
(``maps.depth_to_png``: the levels in blocks, OpenCV's encoder, every row filtered Up), on a
synthetic scene (a ground plane, a box, a curved surface, a little noise) and on a noisier map,
each made at network size and resized up to the photo as the service does; ms, MB, and
whether both decode to the same levels; and the visualizations (each test photo's depth panel,
the photo beside that scene's map in turbo) as an RGB PNG, Pillow at level 1 against ours
(``visualize.encode_png``: OpenCV, rows filtered Up). ``--json OUT`` writes every figure.

    python benchmarks/bench_preprocessing.py --json benchmarks/results/preprocessing.json
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

# name → (size, mode, mean, std): the released recipes of the families that resize this way.
RECIPES = {
    "dinov3 224²": ((224, 224), "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "sam3 1008²": ((1008, 1008), "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def photos() -> dict[str, Any]:
    """The serving benchmarks' 512² JPEGs and the test photos as they are, decoded to RGB."""
    from PIL import Image

    images = {}
    for path in harness.PHOTOS:
        square = Image.open(io.BytesIO(harness.square_photo(path)))
        images[f"{path.stem} 512²"] = square.convert("RGB")
        images[path.name] = Image.open(path).convert("RGB")
    return images


def interleaved_ms(
    steps: Mapping[str, Callable[[], Any]], rounds: int, repeats: int
) -> dict[str, float]:
    """p50 milliseconds of each step over ``rounds`` x ``repeats`` calls, sides alternating."""
    seconds = harness.interleaved_calls(steps, rounds, repeats)
    return {name: statistics.median(values) * 1e3 for name, values in seconds.items()}


def depth_resizes(rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Depth maps to the photo's size: transformers' ``F.interpolate`` (its
    ``post_process_depth_estimation``) against ours (``maps.resize_depth``, ``cv2.resize``)."""
    import torch
    import torch.nn.functional as F

    from engines.families.depth_anything.maps import resize_depth

    rows = []
    print(f"\n{'depth map resize':<34} {'torch ms':>9} {'ours ms':>9} {'ratio':>6} {'max diff':>9}")
    cases = [((518, 518), (512, 512)), ((392, 518), (427, 640)), ((378, 504), (3024, 4032))]
    for (height, width), (out_h, out_w) in cases:
        depth = np.random.default_rng(0).random((height, width), dtype=np.float32).cumsum(axis=1)
        for mode in ("bicubic", "bilinear"):
            tensor = torch.from_numpy(depth)[None, None]
            sides: dict[str, Callable[[], Any]] = {
                "torch": partial(
                    F.interpolate, tensor, size=(out_h, out_w), mode=mode, align_corners=False
                ),
                "ours": partial(resize_depth, depth, out_w, out_h, mode),
            }
            ms = interleaved_ms(sides, rounds, repeats)
            expected = sides["torch"]()[0, 0].numpy()
            # As a share of the map's range.
            diff = float(np.abs(sides["ours"]() - expected).max() / np.ptp(depth))
            label = f"{height}x{width} -> {out_h}x{out_w} {mode}"
            rows.append(
                {"case": label, "torch_ms": ms["torch"], "ours_ms": ms["ours"], "max_diff": diff}
            )
            print(
                f"{label:<34} {ms['torch']:>9.2f} {ms['ours']:>9.2f}"
                f" {ms['torch'] / ms['ours']:>5.1f}x {diff:>9.1e}"
            )
    return rows


def depth_maps() -> dict[str, np.ndarray]:
    """Depth maps at network size, resized up to a photo as the service does (bicubic)."""
    import cv2

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:518, 0:693].astype(np.float32)
    scene = 1.0 / (0.2 + y / 518)  # a ground plane: inverse depth rising to the bottom
    scene[100:300, 100:250] = 3.0 + x[100:300, 100:250] / 500  # a box facing the camera
    scene[50:200, 400:600] = 1.5 + 0.3 * np.sin(y[50:200, 400:600] / 20)  # a curved surface
    scene += 0.002 * rng.standard_normal(scene.shape).astype(np.float32)
    noisy = np.sin(x / 40) + np.cos(y / 25) + 0.02 * rng.standard_normal(x.shape)
    maps = {}
    for name, depth in (("scene", scene), ("noisy", noisy.astype(np.float32))):
        for height, width in ((427, 640), (3024, 4032)):
            resized = cv2.resize(depth, (width, height), interpolation=cv2.INTER_CUBIC)
            maps[f"{name} {height}x{width}"] = resized
    return maps


def pillow_png(depth: np.ndarray, low: float, high: float) -> bytes:
    """The encoder before session 12: whole-map float64 levels, Pillow at zlib level 1."""
    from PIL import Image

    scaled = (depth.astype(np.float64) - low) / (high - low) * 65535
    levels = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_header(title: str) -> None:
    """The column heads of :func:`compare_pngs`'s lines."""
    print(
        f"\n{title:<24} {'Pillow ms':>9} {'ours ms':>9} {'ratio':>6}"
        f" {'Pillow MB':>9} {'ours MB':>9} {'same decoded':>12}"
    )


def compare_pngs(
    case: str, sides: Mapping[str, Callable[[], bytes]], rounds: int, repeats: int
) -> dict[str, Any]:
    """Time the ``pillow`` and ``ours`` PNG encoders interleaved; their sizes and whether both
    decode to the same array. Prints a line."""
    from PIL import Image

    ms = interleaved_ms(sides, rounds, repeats)
    encoded = {side: run() for side, run in sides.items()}
    decoded = [np.asarray(Image.open(io.BytesIO(data))) for data in encoded.values()]
    row = {
        "case": case,
        "pillow_ms": ms["pillow"],
        "ours_ms": ms["ours"],
        "pillow_mb": len(encoded["pillow"]) / 1e6,
        "ours_mb": len(encoded["ours"]) / 1e6,
        "same_decoded": bool(np.array_equal(*decoded)),
    }
    print(
        f"{case:<24} {row['pillow_ms']:>9.1f} {row['ours_ms']:>9.1f}"
        f" {row['pillow_ms'] / row['ours_ms']:>5.2f}x {row['pillow_mb']:>9.2f}"
        f" {row['ours_mb']:>9.2f} {row['same_decoded']!s:>12}"
    )
    return row


def depth_pngs(maps: dict[str, np.ndarray], rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Depth maps as the API's 16-bit PNG: Pillow (before) against ``maps.depth_to_png``."""
    import base64

    from engines.families.depth_anything.maps import depth_to_png

    rows = []
    png_header("depth map as 16-bit PNG")
    for name, depth in maps.items():
        low, high = float(depth.min()), float(depth.max())
        sides: dict[str, Callable[[], bytes]] = {
            "pillow": partial(pillow_png, depth, low, high),
            "ours": lambda d=depth, lo=low, hi=high: base64.b64decode(depth_to_png(d, lo, hi)),
        }
        large = depth.size > 10**6  # fewer calls: ~0.3-1 s each
        turns = max(1, repeats // 8) if large else repeats
        rows.append(compare_pngs(name, sides, max(2, rounds // 2) if large else rounds, turns))
    return rows


def visualization_pngs(scene: np.ndarray, rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Depth panels of the test photos (``scene`` resized to each) as PNG: Pillow at level 1
    against ``encode_png``."""
    import base64

    import cv2
    from PIL import Image

    from engines import visualize

    rows = []
    png_header("visualization as PNG")
    for path in harness.PHOTOS:
        photo = Image.open(path).convert("RGB")
        depth = cv2.resize(scene, photo.size, interpolation=cv2.INTER_CUBIC)
        panel = visualize.depth_panel(photo, depth, near_is_high=True)

        def pillow(image: Image.Image = panel) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
            return buffer.getvalue()

        sides: dict[str, Callable[[], bytes]] = {
            "pillow": pillow,
            "ours": lambda image=panel: base64.b64decode(visualize.encode_png(image)),
        }
        name = f"{path.name} {panel.width}x{panel.height}"
        rows.append(compare_pngs(name, sides, rounds, repeats))
    return rows


def embedding_cosines(checkpoint: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Cosine of the pooled embeddings of each (float order, uint8 order) input pair."""
    import torch
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    cosines = []
    with torch.inference_mode():
        for float_order, uint8_order in pairs:
            batch = torch.from_numpy(np.stack([float_order, uint8_order]))
            pooled = model(pixel_values=batch).pooler_output
            cosine = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
            cosines.append(float(cosine))
    return cosines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--no-embedding", action="store_true", help="skip the model run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()

    import torch

    from engines.images import resize_normalize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    dinov3_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    print(
        f"{'recipe':<12} {'photo':<18} {'float ms':>9} {'uint8 ms':>9} {'ratio':>6}"
        f" {'mean diff':>10} {'max diff':>9}  (grey levels)"
    )
    for recipe, (size, mode, mean, std) in RECIPES.items():
        for name, image in photos().items():
            orders = {
                order: partial(
                    resize_normalize, image, size, mode, 1 / 255, mean, std, uint8=order == "uint8"
                )
                for order in ("float", "uint8")
            }
            ms = interleaved_ms(orders, args.rounds, args.repeats)
            float_order, uint8_order = orders["float"](), orders["uint8"]()
            # Back to 0-255 units: the normalised difference times std, times 255.
            levels = np.abs(uint8_order - float_order) * np.asarray(std)[:, None, None] * 255
            row = {
                "recipe": recipe,
                "photo": name,
                "source_size": list(image.size),
                "float_ms": ms["float"],
                "uint8_ms": ms["uint8"],
                "float_over_uint8": ms["float"] / ms["uint8"],
                "mean_grey_levels": float(levels.mean()),
                "max_grey_levels": float(levels.max()),
            }
            rows.append(row)
            if recipe.startswith("dinov3"):
                dinov3_pairs.append((float_order, uint8_order))
            print(
                f"{recipe:<12} {name:<18} {ms['float']:>9.2f} {ms['uint8']:>9.2f}"
                f" {row['float_over_uint8']:>5.2f}x {row['mean_grey_levels']:>10.3f}"
                f" {row['max_grey_levels']:>9.3f}"
            )
    resize_rows = depth_resizes(args.rounds, max(1, args.repeats // 4))
    maps = depth_maps()
    png_rows = depth_pngs(maps, args.rounds, args.repeats)
    visualization_rows = visualization_pngs(maps["scene 427x640"], args.rounds, args.repeats)
    cosines: list[float] = []
    if not args.no_embedding:
        torch.set_num_threads(threads)
        cosines = embedding_cosines(checkpoints.ensure(args.checkpoints, "dinov3"), dinov3_pairs)
        print(
            f"DINOv3 ViT-S/16 (random weights, fp32) embedding cosine, float vs uint8 order:"
            f" min {min(cosines):.8f} (1 - cosine: largest {1 - min(cosines):.1e},"
            f" mean {1 - statistics.mean(cosines):.1e})"
        )
    harness.write_report(
        args.json,
        "bench_preprocessing",
        started,
        {"rounds": args.rounds, "repeats": args.repeats, "torch_threads": 1},
        {
            "rows": rows,
            "depth_resize_rows": resize_rows,
            "depth_png_rows": png_rows,
            "visualization_png_rows": visualization_rows,
            "dinov3_embedding_cosines": cosines,
        },
    )


if __name__ == "__main__":
    main()
