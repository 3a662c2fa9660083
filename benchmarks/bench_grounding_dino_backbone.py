"""GroundingDINO: would caching the image backbone pay, as SAM3's embedding cache does?

SAM3's vision encoder is ~85 % of a one-prompt request and does not depend on the prompt, so
the same image with new prompts skips it. In GroundingDINO only the Swin backbone and the
input projections are independent of the text: the encoder after them fuses image and text
features in every layer, and the decoder reads both. This program measures what a cache could
skip: full-size GroundingDINO-tiny (``GroundingDinoConfig()`` defaults, random weights, the
compute is the real one) on the real photos at the processor's size (shortest edge 800), one
image per forward as the CPU serves it. Per photo, the median of ``--repeats`` runs of

- ``full``: the whole forward (``GroundingDinoForObjectDetection``), what a request runs now;
- ``image-only``: the backbone, its position embeddings and the input projections, what a
  cache keyed by the image would hold and a hit would skip.

Prints both, the fraction ``image-only / full`` and the speed-up a cache hit would give at
best, ``full / (full - image-only)``; ``--json`` writes the figures.

    python benchmarks/bench_grounding_dino_backbone.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

PROMPTS = ["cat", "person", "rocket"]


def image_features(model: Any, pixel_values: Any, pixel_mask: Any) -> list[Any]:
    """What depends on the image alone (as ``GroundingDinoModel.forward`` computes it): the
    backbone's levels and position embeddings, the 1x1 input projections and the extra
    stride-2 level with its position embedding."""
    import torch

    inner = model.model
    features, positions = inner.backbone(pixel_values, pixel_mask)
    maps = [inner.input_proj_vision[level](source) for level, (source, _) in enumerate(features)]
    source = inner.input_proj_vision[len(maps)](features[-1][0])
    mask = torch.nn.functional.interpolate(pixel_mask[None].float(), size=source.shape[-2:])
    positions.append(inner.backbone.position_embedding(source, mask.to(torch.bool)[0]))
    return [*maps, source, *positions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection

    from engines.families.grounding_dino.images import load_preprocessing
    from engines.families.grounding_dino.text import encode_prompts

    torch.set_num_threads(args.threads)
    path = checkpoints.ensure(args.checkpoints, "grounding-dino")
    model = GroundingDinoForObjectDetection.from_pretrained(path).eval()
    preprocessing = load_preprocessing(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = encode_prompts(PROMPTS, tokenizer, int(model.config.max_text_len))
    rows = []
    for photo in harness.PHOTOS:
        image = Image.open(photo).convert("RGB")
        pixel_values = torch.from_numpy(preprocessing(image))[None]
        pixel_mask = torch.ones(pixel_values.shape[:1] + pixel_values.shape[2:], dtype=torch.long)
        inputs = {
            name: torch.from_numpy(getattr(text, name))[None]
            for name in ("input_ids", "token_type_ids", "attention_mask")
        }
        timings: dict[str, list[float]] = {"full": [], "image-only": []}
        with torch.inference_mode():
            for repeat in range(args.repeats + 1):  # the first of each is a warm-up
                started = time.perf_counter()
                model(pixel_values=pixel_values, pixel_mask=pixel_mask, **inputs)
                full_s = time.perf_counter() - started
                started = time.perf_counter()
                image_features(model, pixel_values, pixel_mask)
                image_s = time.perf_counter() - started
                if repeat:
                    timings["full"].append(full_s)
                    timings["image-only"].append(image_s)
        full, image_only = median(timings["full"]), median(timings["image-only"])
        row = {
            "photo": photo.name,
            "network_size": list(pixel_values.shape[-2:]),
            "full_s": full,
            "image_only_s": image_only,
            "fraction": image_only / full,
            "best_hit_speedup": full / (full - image_only),
        }
        rows.append(row)
        print(
            f"{photo.name:14s} {row['network_size']}  full {full:6.2f} s  image-only "
            f"{image_only:5.2f} s  fraction {row['fraction']:.1%}  a cache hit at best "
            f"{row['best_hit_speedup']:.2f}x"
        )
    fraction = median(r["fraction"] for r in rows)
    print(f"median fraction {fraction:.1%}: a hit would save at most that share of a request")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "bench_grounding_dino_backbone",
                    "machine": harness.machine(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "prompts": PROMPTS,
                    "rows": rows,
                    "median_fraction": fraction,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
