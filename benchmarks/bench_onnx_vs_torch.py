"""torch eager vs ONNX Runtime on CPU, full-size architectures with random weights.

For each family: write a full-size random checkpoint in the released layout, export it with
``vision-api export`` (parity gated, fusions, int8), then time the core forward of each
runtime in its own process (so their thread pools never meet), batch 1 and 4, after warm-up.
Prints a table with ratios measured in the same run; ``--json PATH`` writes the figures.

    python benchmarks/bench_onnx_vs_torch.py --families dinov3 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = [ROOT / "tests" / "assets" / n for n in ("chelsea.jpg", "astronaut.png", "coffee.png",
                                                  "rocket.jpg")]


def dinov3_vits16(directory: Path) -> str:
    """DINOv3 ViT-S/16 (21.6 M params) with the released preprocessor config."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from engines.families.dinov3 import DEFAULT_PREPROCESSING

    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                             num_attention_heads=6, patch_size=16, num_register_tokens=4,
                             use_gated_mlp=False)
    model = DINOv3ViTModel(config)
    # Random init leaves the CLS/register tokens near zero, so the final LayerNorm of a
    # near-constant vector amplifies float32 rounding (torch then drifts 1e-3 from float64).
    # Unit-variance tokens keep the comparison meaningful; the compute is unchanged.
    with torch.no_grad():
        for name, param in model.embeddings.named_parameters():
            if "token" in name:
                param.normal_()
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DEFAULT_PREPROCESSING))
    return "dinov3"


def depth_anything_da3_small(directory: Path) -> str:
    """Depth Anything 3 at the ``da3-small`` preset, as ``depth-anything/DA3-SMALL``.

    DINOv2 ViT-S with the camera token, DualDPT head and camera decoder, in the official
    layout (``{"model_name": "da3-small"}``), with the tiny checkpoints' well-scaled random
    weights (34 M parameters).
    """
    from engines.families.da3 import PRESETS, Da3Network, save_da3
    from engines.families.da3.tiny import _randomize

    network = Da3Network(PRESETS["da3-small"])
    _randomize(network, 0)
    save_da3(network, directory, preset_only=True)
    return "depth-anything"


# family → (builder of a full-size checkpoint, default options factory name)
BUILDERS: dict[str, Callable[[Path], str]] = {
    "dinov3": dinov3_vits16,
    "depth-anything": depth_anything_da3_small,
}


def worker(args: argparse.Namespace) -> None:
    """Time one runtime in this process; print JSON."""
    import torch

    from engines.artifacts import artifact_dir, read_manifest
    from engines.base import LoadRequest, VariantSpec
    from engines.onnx_runtime import OrtCore, OrtOptions
    from engines.registry import default_registry
    from PIL import Image

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    family = default_registry().get(args.family)
    request = LoadRequest(VariantSpec("bench", str(args.checkpoint)), "cpu", "float32", threads)
    if args.runtime == "torch":
        pipeline = family.load_torch(request)
    else:
        precision = "int8" if args.runtime == "onnx-int8" else "fp32"
        directory = artifact_dir(args.artifacts, args.family, "bench", precision)
        core = OrtCore(directory, read_manifest(directory),
                       OrtOptions(intra_op_threads=threads, optimization=args.optimization))
        pipeline = family.load_onnx(request, core)
    options = family.parity_options()[0]
    images = [Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB") for i in range(args.batch)]
    prepared = [pipeline.prepare(im, options) for im in images]
    for _ in range(args.warmup):
        pipeline.forward(prepared, options)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        pipeline.forward(prepared, options)
        times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times)}))


def run_worker(family: str, runtime: str, batch: int, ckpt: Path, art: Path,
               args: argparse.Namespace, optimization: str = "all") -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", "--family", family, "--runtime", runtime,
               "--batch", str(batch), "--checkpoint", str(ckpt), "--artifacts", str(art),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--optimization", optimization, "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", nargs="*", default=list(BUILDERS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--levels", action="store_true", help="also compare ORT optimisation levels")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--optimization", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from engines.base import VariantSpec
    from engines.registry import default_registry
    from export.onnx_export import ExportOptions, export_variant

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family_name in args.families:
            ckpt, art = Path(tmp) / family_name / "ckpt", Path(tmp) / family_name / "art"
            ckpt.mkdir(parents=True)
            BUILDERS[family_name](ckpt)
            family = default_registry().get(family_name)
            started = time.perf_counter()
            manifests = export_variant(
                family, VariantSpec("bench", str(ckpt)),
                ExportOptions(out=art, quantize="int8", images=PHOTOS),
            )
            export_s = time.perf_counter() - started
            parity = [json.loads(p.read_text())["parity"] for p in manifests]
            for batch in (1, 4):
                torch_ms = run_worker(family_name, "torch", batch, ckpt, art, args)["median_ms"]
                row = {"family": family_name, "batch": batch, "torch_ms": torch_ms,
                       "export_s": round(export_s, 1), "parity_fp32": parity[0],
                       "parity_int8": parity[1] if len(parity) > 1 else None}
                for runtime in ("onnx", "onnx-int8"):
                    ms = run_worker(family_name, runtime, batch, ckpt, art, args)["median_ms"]
                    row[f"{runtime}_ms"] = ms
                    row[f"{runtime}_speedup"] = torch_ms / ms
                if args.levels:
                    for level in ("disable", "basic", "extended", "all"):
                        ms = run_worker(family_name, "onnx", batch, ckpt, art, args, level)
                        row[f"onnx_{level}_ms"] = ms["median_ms"]
                rows.append(row)
    print(f"\n{'family':<16}{'batch':>6}{'torch ms':>11}{'onnx ms':>10}{'x':>7}"
          f"{'int8 ms':>10}{'x':>7}")
    for r in rows:
        print(f"{r['family']:<16}{r['batch']:>6}{r['torch_ms']:>11.1f}{r['onnx_ms']:>10.1f}"
              f"{r['onnx_speedup']:>7.2f}{r['onnx-int8_ms']:>10.1f}{r['onnx-int8_speedup']:>7.2f}")
        levels = {k: round(v, 1) for k, v in r.items() if k.startswith("onnx_") and k.endswith("_ms")}
        if levels:
            print(f"    ORT optimisation levels (ms): {levels}")
        print(f"    parity fp32 {r['parity_fp32']}  int8 {r['parity_int8']}")
    result = {"machine": platform.platform(), "cpus": os.cpu_count(),
              "date": datetime.now(UTC).isoformat(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
