"""How fast this CPU can multiply matrices, and how close each runtime already is to it.

A speed-up of ONNX Runtime over torch eager is bounded by how much of the machine torch
leaves unused: if a family's forward is mostly matrix products and torch already runs them
near the CPU's peak rate, no graph runtime can be much faster in float32. This program
measures, in one run:

- the peak rate of one large matrix product (2048³) and of the shapes the families use, in
  torch (oneDNN/MKL) and in ONNX Runtime (MLAS), float32 and dynamic int8 (ORT's
  ``quantize_dynamic``, as the int8 artifacts are made);
- each family's floating-point work per forward at full size (``torch.utils.flop_counter``:
  matrix products, convolutions, attention), and torch's and ORT's time for it, from
  ``bench_onnx_vs_torch.py``'s JSON if given;
- from those, the fraction of peak each runtime reaches and the largest speed-up any runtime
  could have over torch if it ran all of that work at the measured peak (the bound).

    python benchmarks/bench_roofline.py --families dinov3 \
        --keep DIR --timings results/onnx_vs_torch_session3.json

Each measurement runs in its own process (no thread pools meet), interleaved in rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (M, K, N): one large square product, then the products of a ViT-S/16 block at 224²
# (201 tokens, width 384, MLP 1536) and of a ViT-S block at 504² (1297 tokens).
SHAPES = [
    (2048, 2048, 2048),
    (201, 384, 1152),
    (201, 384, 1536),
    (201, 1536, 384),
    (1297, 384, 1536),
    (1297, 1536, 384),
]


def _time(call, repeats: int, seconds: float = 0.4) -> float:
    """Median ms of ``repeats`` calls after ``seconds`` of warm-up calls."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def gemm_worker(runtime: str, shape: tuple[int, int, int], threads: int, repeats: int) -> float:
    """ms of one ``[M, K] @ [K, N]`` product with a constant right-hand side."""
    import numpy as np

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        with torch.inference_mode():
            return _time(lambda: torch.mm(ta, tb), repeats)
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        if runtime == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "gemm.int8.onnx"
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            path = quantized
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return _time(lambda: session.run(None, {"a": a}), repeats)


def flops_worker(family: str, checkpoint: Path) -> dict[str, float]:
    """Floating-point operations of one batch-1 forward of the family's torch pipeline."""
    import torch
    from bench_onnx_vs_torch import PHOTOS
    from PIL import Image
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from engines.base import LoadRequest, VariantSpec
    from engines.registry import default_registry
    from export.parity import exporter

    # torch counts the CUDA attention kernels but not the CPU one: same formula.
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(cpu_attention)
        def _(
            query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
        ) -> int:
            return flop_counter.sdpa_flop_count(query, key, value)

    torch.set_num_threads(os.cpu_count() or 1)
    spec = default_registry().get(family)
    pipeline = spec.load_torch(
        LoadRequest(VariantSpec("bench", str(checkpoint)), "cpu", "float32", os.cpu_count() or 1)
    )
    options = exporter(spec).parity_options()[0]
    prepared = [pipeline.prepare(Image.open(PHOTOS[1]).convert("RGB"), options)]
    counter = FlopCounterMode(display=False)
    with counter:
        pipeline.forward(prepared, options)
    per_op = {str(op): float(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": float(counter.get_total_flops()), **per_op}


def _subprocess(*args: str) -> object:
    command = [sys.executable, __file__, "--worker", *args]
    out = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="*", default=[])
    parser.add_argument(
        "--keep",
        type=Path,
        help="bench_onnx_vs_torch.py's --keep directory (its checkpoints); needed with --families",
    )
    parser.add_argument(
        "--timings",
        type=Path,
        nargs="*",
        default=[],
        help="bench_onnx_vs_torch.py's --json outputs, for the fractions of peak",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(Path(__file__).parent))
        if args.kind == "gemm":
            shape = tuple(int(x) for x in args.shape.split("x"))
            print(json.dumps(gemm_worker(args.runtime, shape, args.threads, args.repeats)))
        else:
            print(json.dumps(flops_worker(args.family, args.checkpoint)))
        return

    if args.families and args.keep is None:
        parser.error("--families needs --keep (bench_onnx_vs_torch.py --keep DIR)")
    runtimes = ("torch", "onnx", "onnx-int8")
    samples: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.rounds):
        for shape in SHAPES:
            key = "x".join(map(str, shape))
            order = runtimes[round_ % 3 :] + runtimes[: round_ % 3]
            for runtime in order:
                ms = _subprocess(
                    "--kind",
                    "gemm",
                    "--runtime",
                    runtime,
                    "--shape",
                    key,
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                )
                samples.setdefault(key, {}).setdefault(runtime, []).append(float(ms))
    gemm: dict[str, dict[str, float]] = {}
    print(
        f"matrix products, {args.threads} threads, GFLOP/s (int8: GOP/s), best of "
        f"{args.rounds} rounds of median-of-{args.repeats}"
    )
    print(f"{'M x K x N':>18} " + " ".join(f"{r:>10}" for r in runtimes))
    for key, by_runtime in samples.items():
        m, k, n = (int(x) for x in key.split("x"))
        rates = {r: 2 * m * k * n / (min(ms) * 1e-3) / 1e9 for r, ms in by_runtime.items()}
        gemm[key] = rates
        print(f"{key:>18} " + " ".join(f"{rates[r]:>10.1f}" for r in runtimes))
    peak = {r: max(rates[r] for rates in gemm.values()) for r in runtimes}
    print("peak " + ", ".join(f"{r} {v:.1f}" for r, v in peak.items()))

    timing_rows = [row for path in args.timings for row in json.loads(path.read_text())["rows"]]
    families: dict[str, object] = {}
    for family in args.families:
        checkpoint = args.keep / family / "ckpt"
        flops = _subprocess("--kind", "flops", "--family", family, "--checkpoint", str(checkpoint))
        total = flops["total"]  # type: ignore[index]
        entry: dict[str, object] = {"gflop": total / 1e9, "by_op": flops}
        print(f"\n{family}: {total / 1e9:.2f} GFLOP per batch-1 forward")
        for op, n in sorted(flops.items(), key=lambda kv: -kv[1]):  # type: ignore[union-attr]
            if op != "total":
                print(f"  {op:<50} {n / 1e9:8.2f}")
        row = next((r for r in timing_rows if r["family"] == family and r["batch"] == 1), None)
        if row:
            fp32_peak = max(peak["torch"], peak["onnx"])
            floor_ms = total / (fp32_peak * 1e9) * 1e3
            entry.update(
                torch_ms=row["torch_ms"],
                onnx_ms=row["onnx_ms"],
                floor_ms=floor_ms,
                torch_fraction=floor_ms / row["torch_ms"],
                onnx_fraction=floor_ms / row["onnx_ms"],
                bound_speedup=row["torch_ms"] / floor_ms,
            )
            print(
                f"  at the fp32 peak ({fp32_peak:.0f} GFLOP/s) this work takes {floor_ms:.1f} ms;"
                f" torch {row['torch_ms']:.1f} ms ({100 * floor_ms / row['torch_ms']:.0f} % of"
                f" peak), ORT {row['onnx_ms']:.1f} ms ({100 * floor_ms / row['onnx_ms']:.0f} %)"
                f" → no fp32 runtime can beat torch by more than"
                f" {row['torch_ms'] / floor_ms:.2f}x here"
            )
        families[family] = entry
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "gemm": gemm,
                    "peak": peak,
                    "families": families,
                    "load_avg_end": os.getloadavg()[0],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
