"""GroundingDINO on CPU: transformers' forward against the one our torch engine serves.

Our torch engine changes two things on CPU (``engines/families/grounding_dino/``):
``deformable.py`` serves the multi-scale deformable attention as a weighted ``embedding_bag``
instead of transformers' per-level ``grid_sample`` + stack + product + sum, and
``feedforward.py`` runs the encoder's feed-forward in blocks of rows. This program measures
what they change, in one process, on full-size
GroundingDINO-tiny (``GroundingDinoConfig()`` defaults, random weights: the compute is the
real one) and the real photos at the processor's size (shortest edge 800):

- ``kernel``: one call of the attention kernel at the encoder's shapes for the first photo
  (every position of the four levels as a query, 8 heads, 4 levels, 4 points), transformers'
  ``MultiScaleDeformableAttention`` against ``gathered_deformable_attention``;
- ``forward``: the whole model per photo, the same weights loaded three times: as
  transformers runs it, with the gathered attention only, and with both (``ours``: what our
  torch engine serves), interleaved (A B B A ...) so that a drifting machine slows both alike.

Prints medians, the ratio, and how far the two models' outputs are apart (:func:`compare`).

    python benchmarks/bench_grounding_dino_msda.py --repeats 3 --json results/gdino_msda.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

PROMPTS = ["cat", "person", "rocket"]


def kernel_inputs(shapes: list[tuple[int, int]], generator: Any) -> tuple[Any, ...]:
    import torch

    tokens = sum(h * w for h, w in shapes)
    heads, dim, levels, points = 8, 32, len(shapes), 4
    value = torch.randn(1, tokens, heads, dim, generator=generator)
    locations = torch.rand(1, tokens, heads, levels, points, 2, generator=generator)
    weights = torch.rand(1, tokens, heads, levels, points, generator=generator)
    return value, locations, weights / weights.sum((-1, -2), keepdim=True)


def compare(a: Any, b: Any) -> dict[str, float]:
    """How far two outputs of the model are apart: the encoder's image features (before any
    selection), the share of the 900 queries that start from the same proposal (the top-k of
    the encoder's scores, a selection a 1e-5 difference can reorder where random weights make
    near-ties), and the predicted boxes of those queries."""
    import torch

    encoder = a.encoder_last_hidden_state_vision - b.encoder_last_hidden_state_vision
    same = (a.init_reference_points - b.init_reference_points).abs().amax(-1) <= 1e-4
    boxes = (a.pred_boxes - b.pred_boxes).abs().amax(-1)[same]
    return {
        "encoder_max_abs_diff": encoder.abs().max().item(),
        "same_proposals_fraction": same.float().mean().item(),
        "same_proposals_boxes_max_abs_diff": boxes.max().item() if boxes.numel() else 0.0,
        "boxes_max_abs_diff_all": torch.max((a.pred_boxes - b.pred_boxes).abs()).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="timed calls per run and photo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        MultiScaleDeformableAttention,
    )

    from engines.families.grounding_dino.deformable import (
        gathered_deformable_attention,
        use_gathered_attention,
    )
    from engines.families.grounding_dino.feedforward import use_blocked_feedforward
    from engines.families.grounding_dino.images import load_preprocessing
    from engines.families.grounding_dino.text import encode_prompts

    torch.set_num_threads(args.threads)
    path = checkpoints.ensure(args.checkpoints, "grounding-dino")
    models = {
        name: GroundingDinoForObjectDetection.from_pretrained(path).eval()
        for name in ("transformers", "gathered", "ours")
    }
    switched = use_gathered_attention(models["gathered"])
    use_gathered_attention(models["ours"])
    blocked = use_blocked_feedforward(models["ours"])
    preprocessing = load_preprocessing(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = encode_prompts(PROMPTS, tokenizer, int(models["gathered"].config.max_text_len))
    text_inputs = {
        name: torch.from_numpy(getattr(text, name))[None]
        for name in ("input_ids", "token_type_ids", "attention_mask")
    }
    result: dict[str, Any] = {
        "benchmark": "bench_grounding_dino_msda",
        "command": " ".join(sys.argv),
        "machine": harness.machine(),
        "threads": args.threads,
        "kernels_switched": switched,
        "feedforwards_blocked": blocked,
        "photos": [],
    }
    with torch.inference_mode():
        first = Image.open(harness.PHOTOS[0]).convert("RGB")
        height, width = preprocessing(first).shape[-2:]
        shapes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64)]
        value, locations, weights = kernel_inputs(shapes, torch.Generator().manual_seed(0))
        own = MultiScaleDeformableAttention()
        spatial = torch.tensor(shapes)
        seconds = harness.interleaved_calls(
            {
                "transformers": lambda: own(value, spatial, shapes, None, locations, weights, 64),
                "gathered": lambda: gathered_deformable_attention(
                    value, shapes, locations, weights
                ),
            },
            args.repeats,
        )
        kernel = {name: median(s) for name, s in seconds.items()}
        result["kernel"] = {"shapes": shapes, "median_s": kernel}
        print(
            f"kernel at the encoder's shapes {shapes}: transformers "
            f"{kernel['transformers'] * 1e3:.0f} ms, gathered {kernel['gathered'] * 1e3:.0f} ms, "
            f"{kernel['transformers'] / kernel['gathered']:.2f}x"
        )
        for photo in harness.PHOTOS:
            image = Image.open(photo).convert("RGB")
            pixel_values = torch.from_numpy(preprocessing(image))[None]
            pixel_mask = torch.ones((1, *pixel_values.shape[2:]), dtype=torch.long)
            outputs: dict[str, Any] = {}

            def run(
                name: str, pv: Any = pixel_values, pm: Any = pixel_mask, out: Any = outputs
            ) -> None:
                out[name] = models[name](pixel_values=pv, pixel_mask=pm, **text_inputs)

            seconds = harness.interleaved_calls(
                {name: (lambda n=name: run(n)) for name in models}, args.repeats
            )
            times = {name: median(s) for name, s in seconds.items()}
            drift = compare(outputs["transformers"], outputs["ours"])
            row = {
                "photo": photo.name,
                "network_size": [int(height) for height in pixel_values.shape[-2:]],
                "median_s": times,
                "speedup": times["transformers"] / times["ours"],
                "speedup_gathered_only": times["transformers"] / times["gathered"],
                **drift,
                "seconds": seconds,
            }
            result["photos"].append(row)
            print(
                f"{photo.name:14s} {row['network_size']}  transformers "
                f"{times['transformers']:5.2f} s  gathered {times['gathered']:5.2f} s  ours "
                f"{times['ours']:5.2f} s  {row['speedup']:.2f}x  encoder |diff| "
                f"{drift['encoder_max_abs_diff']:.1e}  "
                f"same proposals {drift['same_proposals_fraction']:.0%} (their boxes |diff| "
                f"{drift['same_proposals_boxes_max_abs_diff']:.1e})"
            )
    result["median_speedup"] = median(r["speedup"] for r in result["photos"])
    print(
        f"median forward speed-up {result['median_speedup']:.2f}x ({switched} kernels switched, "
        f"{blocked} feed-forwards blocked)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
