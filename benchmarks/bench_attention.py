"""bf16 attention on CPU: torch's SDPA kernel against query blocks, alone and in DA-V2-small.

What ``engines/attention.py`` and the depth family's channels-last layout change, in one
process, on a CPU with bf16 matrix units (on one without them the family stays float32 and the
blocks never run):

- ``kernel``: ``F.scaled_dot_product_attention`` (torch's CPU flash attention) against
  ``blocked_attention`` on bf16 tensors at the shapes the served models use (DINOv3 ViT-S/16
  at 224², alone and as a batch of 8; DA-V2-small at a landscape and a square photo; SAM3's
  ViT windows and global layers), and each one's relative error to float64;
- ``forward``: full-size DA-V2-small (random weights: the compute is the real one) on the real
  photos, the same weights loaded four times: float32 as transformers runs it (the seed-style
  baseline's forward), bf16 as transformers runs it (SDPA), bf16 with the blocks, and bf16 with
  the blocks and channels-last (``ours``: what our torch engine serves on such a CPU),
  interleaved (A B C D D C B A ...) so that a drifting machine slows all alike; and each one's
  depth relative error to float32.

    python benchmarks/bench_attention.py --repeats 4 --json results/attention_bf16cpu.json
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
from benchmarks.bench_grounding_dino_msda import interleaved  # noqa: E402

# (what, batch, heads, tokens, head_dim)
KERNEL_SHAPES = [
    ("DINOv3 ViT-S/16 224²", 1, 6, 201, 64),
    ("DINOv3 ViT-S/16 224², batch 8", 8, 6, 201, 64),
    ("DA-V2-small 350x518", 1, 6, 926, 64),
    ("DA-V2-small 518x518", 1, 6, 1370, 64),
    ("SAM3 ViT, 9 windows of 24²", 9, 16, 576, 64),
    ("SAM3 ViT, global 72²", 1, 16, 5184, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="timed calls per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from torch.nn import functional as F
    from transformers import DepthAnythingForDepthEstimation

    from engines.attention import blocked_attention, use_blocked_attention
    from engines.devices import cpu_bf16_units
    from engines.families.depth_anything.v2 import DptPreprocessing

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "bench_attention",
        "command": " ".join(sys.argv),
        "machine": harness.machine(),
        "bf16_units": cpu_bf16_units(),
        "threads": args.threads,
        "kernel": [],
        "forward": [],
    }
    if not result["bf16_units"]:
        print("note: no bf16 matrix units here; the served models stay float32 on this CPU")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for what, batch, heads, tokens, dim in KERNEL_SHAPES:
            q, k, v = (
                torch.randn(batch, heads, tokens, dim, generator=generator).bfloat16()
                for _ in range(3)
            )
            reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            outputs: dict[str, Any] = {}

            def run(name: str, out: dict[str, Any] = outputs, qkv: Any = (q, k, v)) -> None:
                kernel = blocked_attention if name == "blocked" else F.scaled_dot_product_attention
                out[name] = kernel(*qkv)

            runs = {name: (lambda n=name: run(n)) for name in ("sdpa", "blocked")}
            repeats = args.repeats if tokens < 4000 else max(2, args.repeats // 2)
            seconds = interleaved(runs, repeats)
            times = {name: median(s) for name, s in seconds.items()}
            errors = {
                name: float((out.double() - reference).norm() / reference.norm())
                for name, out in outputs.items()
            }
            row = {
                "shape": what,
                "batch_heads_tokens_dim": [batch, heads, tokens, dim],
                "median_ms": {n: t * 1e3 for n, t in times.items()},
                "speedup": times["sdpa"] / times["blocked"],
                "rel_error_to_float64": errors,
            }
            result["kernel"].append(row)
            print(
                f"kernel {what:32s} sdpa {times['sdpa'] * 1e3:7.2f} ms  blocked "
                f"{times['blocked'] * 1e3:7.2f} ms  {row['speedup']:.2f}x  error to float64 "
                f"{errors['sdpa']:.1e} / {errors['blocked']:.1e}"
            )

        path = checkpoints.ensure(args.checkpoints, "depth-anything-v2")
        models = {
            "float32": DepthAnythingForDepthEstimation.from_pretrained(path).eval(),
            "bf16_sdpa": DepthAnythingForDepthEstimation.from_pretrained(
                path, dtype=torch.bfloat16
            ).eval(),
            "bf16_blocked": DepthAnythingForDepthEstimation.from_pretrained(
                path, dtype=torch.bfloat16
            ).eval(),
            "ours": DepthAnythingForDepthEstimation.from_pretrained(
                path, dtype=torch.bfloat16
            ).eval(),
        }
        use_blocked_attention(models["bf16_blocked"])
        use_blocked_attention(models["ours"])
        models["ours"] = models["ours"].to(memory_format=torch.channels_last)
        preprocessing = DptPreprocessing.from_config({})
        for photo in harness.PHOTOS:
            pixels = torch.from_numpy(preprocessing(Image.open(photo).convert("RGB")))[None]
            depths: dict[str, Any] = {}

            def forward(name: str, out: dict[str, Any] = depths, x: Any = pixels) -> None:
                dtype = torch.float32 if name == "float32" else torch.bfloat16
                out[name] = models[name](pixel_values=x.to(dtype)).predicted_depth.double()

            seconds = interleaved({n: (lambda n=n: forward(n)) for n in models}, args.repeats)
            times = {name: median(s) for name, s in seconds.items()}
            reference = depths["float32"]
            errors = {
                name: float((d - reference).norm() / reference.norm())
                for name, d in depths.items()
                if name != "float32"
            }
            row = {
                "photo": photo.name,
                "network_size": list(pixels.shape[-2:]),
                "median_ms": {n: t * 1e3 for n, t in times.items()},
                "speedup_vs_bf16_sdpa": times["bf16_sdpa"] / times["ours"],
                "speedup_vs_float32": times["float32"] / times["ours"],
                "depth_rel_l2_to_float32": errors,
                "seconds": seconds,
            }
            result["forward"].append(row)
            print(
                f"DA-V2-small {photo.name:14s} {row['network_size']}  float32 "
                f"{times['float32'] * 1e3:4.0f} ms  bf16 sdpa {times['bf16_sdpa'] * 1e3:4.0f}  "
                f"+blocks {times['bf16_blocked'] * 1e3:4.0f}  +channels-last (ours) "
                f"{times['ours'] * 1e3:4.0f}  ours vs bf16 sdpa {row['speedup_vs_bf16_sdpa']:.2f}x"
                f", vs float32 {row['speedup_vs_float32']:.2f}x  depth error to float32 "
                f"{errors['bf16_sdpa']:.4f} / {errors['bf16_blocked']:.4f} / {errors['ours']:.4f}"
            )
    result["median_speedup_vs_bf16_sdpa"] = median(
        r["speedup_vs_bf16_sdpa"] for r in result["forward"]
    )
    result["median_speedup_vs_float32"] = median(r["speedup_vs_float32"] for r in result["forward"])
    print(
        "DA-V2-small forward, median over the photos: ours "
        f"{result['median_speedup_vs_bf16_sdpa']:.2f}x transformers' bf16, "
        f"{result['median_speedup_vs_float32']:.2f}x float32"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
