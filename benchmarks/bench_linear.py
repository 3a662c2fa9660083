"""bf16 linear layers on CPU: ``F.linear`` against the weights prepacked for oneDNN.

What ``engines/linear.py`` changes, in one process, on a CPU where oneDNN runs bf16:

- ``layer``: one bf16 linear layer at the shapes the served models run (DINOv3 ViT-S/16 at
  224², alone and as a batch of 8; DA-V2-small at 518²; SAM3's ViT at 1008²), ``F.linear``
  with the dense weight against :class:`~engines.linear.PackedLinear`, and the largest
  difference between their outputs;
- ``forward``: the served bf16 models (full-size architectures, random weights: the compute is
  the real one) loaded twice through their family, one of them unpacked back to plain layers:
  DINOv3 ViT-S/16 at batch 1 and 8, DA-V2-small on a 518² input, and with ``--sam3`` SAM3's
  vision encoder (its ``vision`` graph) on a 1008² input; and whether their outputs are equal.

Both sides run interleaved (A B B A ...), so a drifting machine slows both alike.

    python benchmarks/bench_linear.py --json results/linear_bf16cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)
from benchmarks.bench_grounding_dino_msda import interleaved  # noqa: E402

# (what, rows, in features, out features)
LAYER_SHAPES = [
    ("DINOv3 ViT-S/16 224² attention out", 201, 384, 384),
    ("DINOv3 ViT-S/16 224² mlp in", 201, 384, 1536),
    ("DINOv3 ViT-S/16 224² mlp out", 201, 1536, 384),
    ("the same, batch 8, mlp in", 1608, 384, 1536),
    ("DA-V2-small 518² mlp in", 1370, 384, 1536),
    ("SAM3 ViT 1008², 1024 -> 1024", 5184, 1024, 1024),
]


def _store(store: dict[str, Any], key: str, fn: Callable[..., Any], *args: Any) -> None:
    store[key] = fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--sam3", action="store_true", help="also SAM3's vision encoder (slow)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    from engines.base import LoadRequest, VariantSpec
    from engines.families.depth_anything.family import DepthAnythingFamily
    from engines.families.dinov3.family import Dinov3Family
    from engines.linear import PackedLinear, packing_supported, use_packed_linears

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "bench_linear",
        "command": " ".join(sys.argv),
        "machine": harness.machine(),
        "packing_supported": packing_supported(),
        "threads": args.threads,
        "layer": [],
        "forward": [],
    }
    if not result["packing_supported"]:
        raise SystemExit("oneDNN cannot run bf16 on this CPU: nothing is packed here")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for what, rows, inp, out in LAYER_SHAPES:
            x = torch.randn(rows, inp, generator=generator).bfloat16()
            dense = nn.Linear(inp, out).bfloat16().eval()
            packed = nn.Linear(inp, out).bfloat16().eval()
            packed.load_state_dict(dense.state_dict())
            use_packed_linears(packed)
            outputs: dict[str, Any] = {}
            layer_runs: dict[str, Callable[[], Any]] = {
                "dense": functools.partial(
                    _store, outputs, "dense", F.linear, x, dense.weight, dense.bias
                ),
                "packed": functools.partial(_store, outputs, "packed", packed, x),
            }
            seconds = interleaved(layer_runs, 3 * args.repeats)
            times = {n: median(s) for n, s in seconds.items()}
            row = {
                "shape": what,
                "rows_in_out": [rows, inp, out],
                "median_us": {n: t * 1e6 for n, t in times.items()},
                "speedup": times["dense"] / times["packed"],
                "max_abs_difference": float((outputs["dense"] - outputs["packed"]).abs().max()),
            }
            result["layer"].append(row)
            print(
                f"layer {what:36s} dense {times['dense'] * 1e6:8.1f} us  packed "
                f"{times['packed'] * 1e6:8.1f} us  {row['speedup']:.2f}x  "
                f"max difference {row['max_abs_difference']:g}"
            )

    models: list[tuple[str, Any, str, tuple[int, ...], str]] = [
        ("DINOv3 ViT-S/16, batch 1", Dinov3Family(), "dinov3", (1, 3, 224, 224), "model"),
        ("DINOv3 ViT-S/16, batch 8", Dinov3Family(), "dinov3", (8, 3, 224, 224), "model"),
        ("DA-V2-small 518²", DepthAnythingFamily(), "depth-anything-v2", (1, 3, 518, 518), "model"),
    ]
    if args.sam3:
        from engines.families.sam3.family import Sam3Family

        models.append(
            ("SAM3 vision encoder 1008²", Sam3Family(), "sam3", (1, 3, 1008, 1008), "vision")
        )
    for what, family, name, shape, graph in models:
        path = checkpoints.ensure(args.checkpoints, name)
        request = LoadRequest(VariantSpec("bench", str(path)), "cpu", "bfloat16", args.threads)
        cores = {
            "packed": family.load_torch(request).core,
            "dense": family.load_torch(request).core,
        }
        for layer in list(cores["dense"].module.modules()):
            if isinstance(layer, PackedLinear):
                layer.unpack()
        packed_layers = sum(isinstance(m, PackedLinear) for m in cores["packed"].module.modules())
        pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
        outputs = {}
        forward_runs: dict[str, Callable[[], Any]] = {
            side: functools.partial(
                _store, outputs, side, core.run, graph, {"pixel_values": pixels}
            )
            for side, core in cores.items()
        }
        seconds = interleaved(forward_runs, args.repeats if graph == "model" else 2)
        times = {s: median(t) for s, t in seconds.items()}
        equal = all(
            np.array_equal(outputs["dense"][k], outputs["packed"][k]) for k in outputs["dense"]
        )
        row = {
            "model": what,
            "packed_layers": packed_layers,
            "median_ms": {s: t * 1e3 for s, t in times.items()},
            "speedup": times["dense"] / times["packed"],
            "outputs_equal": equal,
        }
        result["forward"].append(row)
        print(
            f"forward {what:26s} dense {times['dense'] * 1e3:8.1f} ms  packed "
            f"{times['packed'] * 1e3:8.1f} ms  {row['speedup']:.2f}x  ({packed_layers} layers "
            f"packed; outputs equal: {equal})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
