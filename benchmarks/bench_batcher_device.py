"""Through the batcher on a device, next to bare forwards and the floors the device allows.

For a lent GPU (``--device cuda``; it runs on the CPU too, for a check of the program): one
process, full-size random-weight checkpoints (``checkpoints.py``), our server's own pool and
inference service in the device's default dtype (``dtype: auto``: float16 on CUDA), no HTTP.

- **The device's rates**: a large matrix product in that dtype (TFLOP/s) and a large
  device-to-device copy (GB/s, bytes read + written).
- **The model's work**: floating-point operations per image (``torch.utils.flop_counter`` on
  the served forward at batch 1) and the weights' bytes (read once per forward).
- **Bare forwards** (the pipeline's ``forward`` on pre-processed images) at batch 1 and
  ``--batch``, and **through the batcher** (``InferenceService.run``: decoding,
  pre-processing, the batcher, post-processing) at each ``--concurrency``: images per second
  and ms per image, each next to its floor, ``max(FLOPs / matmul rate, weight bytes / batch /
  bandwidth)`` per image (activations not counted: a lower bound), and the batch sizes the
  batcher formed.

    python benchmarks/bench_batcher_device.py --device cuda --json results/batcher_h100.json
    bash benchmarks/gpu_session.sh run   # on a lent GPU, both families (see that script)
    python benchmarks/bench_batcher_device.py --device cpu --concurrency 1 4 --requests 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)
from benchmarks.gpu_torch_cuda import timed  # noqa: E402


def device_rates(device: str, dtype: str, repeats: int) -> dict[str, float]:
    """The device's matrix-product rate in ``dtype`` and its copy bandwidth."""
    import torch

    torch_dtype = getattr(torch, dtype)
    side = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(side, side, device=device).to(torch_dtype)
    b = torch.randn(side, side, device=device).to(torch_dtype)
    with torch.inference_mode():
        ms = timed(lambda: torch.mm(a, b), repeats, device)
    tflops = 2 * side**3 / (ms / 1e3) / 1e12
    count = (2**28 if device.startswith("cuda") else 2**25) // 4  # 256 MB / 32 MB of float32
    source = torch.empty(count, device=device)
    target = torch.empty_like(source)
    ms_copy = timed(lambda: target.copy_(source), repeats, device)
    gbps = 2 * source.numel() * source.element_size() / (ms_copy / 1e3) / 1e9
    return {"matmul_tflops": round(tflops, 2), "copy_gb_per_s": round(gbps, 1), "side": side}


def model_work(pipeline: Any, prepared: Any, options: Any) -> float:
    """Floating-point operations of one image's served forward.

    The counter knows aten's products; layers whose bf16 weights are prepacked for oneDNN
    (on CPU, :mod:`engines.linear`) call an operator it does not, so those are counted here.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engines.linear import PackedLinear

    packed = 0.0

    def count(layer: Any, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal packed
        packed += 2.0 * inputs[0].numel() * layer.out_features

    module = getattr(getattr(pipeline, "core", None), "module", None)
    hooks = [
        m.register_forward_hook(count)
        for m in (module.modules() if module is not None else [])
        if isinstance(m, PackedLinear)
    ]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.inference_mode():
            pipeline.forward([prepared], options)
    finally:
        for hook in hooks:
            hook.remove()
    return float(counter.get_total_flops()) + packed


def floor_ms(flops: float, weight_bytes: float, batch: int, rates: dict[str, float]) -> float:
    """The fastest an image could go at ``batch``: compute- or weight-read-bound."""
    compute = flops / (rates["matmul_tflops"] * 1e12)
    weights = weight_bytes / batch / (rates["copy_gb_per_s"] * 1e9)
    return max(compute, weights) * 1e3


async def through_batcher(
    inference: Any, family: str, requests: list[Any], concurrency: int, count: int
) -> dict[str, Any]:
    """``count`` requests, ``concurrency`` in flight, through ``InferenceService.run``."""
    latencies: list[float] = []
    indices = iter(range(count))

    async def lane() -> None:
        for i in indices:  # shared: each index taken once
            started = time.perf_counter()
            await inference.run(family, requests[i % len(requests)])
            latencies.append((time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "images_per_s": count / wall,
        "ms_per_image": wall * 1e3 / count,
        "p50_ms": harness.percentile(latencies, 50),
        "p95_ms": harness.percentile(latencies, 95),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import msgspec
    import torch

    from service.settings import Settings
    from service.wiring import build_inference, build_pool

    name = harness.CHECKPOINT_NAMES[(args.family, args.variant)]
    config = checkpoints.prepare(args.checkpoints, [name])
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as empty:
        env = {
            **os.environ,
            "VISION_API_DEVICE": args.device,
            "VISION_API_ENGINE": "torch",
            "VISION_API_ARTIFACTS_DIR": empty,
            "VISION_API_REDIS_URL": "",
        }
        if args.max_batch_size:
            env["VISION_API_MAX_BATCH_SIZE"] = str(args.max_batch_size)
        settings = Settings.load(config, env)
        pool = build_pool(settings)
        inference = build_inference(settings, pool)
        try:
            endpoint = inference.endpoint(args.family)
            bodies = harness.request_bodies(args.family, args.variant)
            requests = [msgspec.json.decode(b, type=endpoint.request) for b in bodies]
            for request in requests:  # loads the model (and its dtype check), warms up
                await inference.run(args.family, request)
            (model,) = pool.loaded()
            pipeline, options = model.pipeline, requests[0]
            images = await inference.decode(requests[0])
            prepared = pipeline.prepare(images[0].image, options)
            report: dict[str, Any] = {
                "model": {
                    "family": args.family,
                    "variant": args.variant,
                    "device": model.device,
                    "dtype": model.dtype,
                    "dtype_reason": model.dtype_reason,
                    "memory_mb": model.memory_mb,
                },
                "rates": device_rates(args.device, model.dtype, args.repeats),
            }
            flops = model_work(pipeline, prepared, options)
            weight_bytes = model.memory_mb * 2**20
            report["model"]["gflops_per_image"] = round(flops / 1e9, 2)
            rates = report["rates"]
            rows: list[dict[str, Any]] = []
            for batch in sorted({1, args.batch}):
                batch_of = [prepared] * batch
                with torch.inference_mode():
                    ms = timed(
                        lambda b=batch_of: pipeline.forward(b, options), args.repeats, args.device
                    )
                floor = floor_ms(flops, weight_bytes, batch, rates)
                rows.append(
                    {
                        "figure": f"bare forward, batch {batch}",
                        "images_per_s": batch / (ms / 1e3),
                        "ms_per_image": ms / batch,
                        "floor_ms_per_image": floor,
                    }
                )
            limit = pool.batch_limits(pool.registry.get(args.family), model.device)
            for concurrency in args.concurrency:
                await through_batcher(inference, args.family, requests, concurrency, concurrency)
                before = dict(model.batcher.sizes) if model.batcher else {}
                row = await through_batcher(
                    inference, args.family, requests, concurrency, args.requests
                )
                after = dict(model.batcher.sizes) if model.batcher else {}
                sizes = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
                typical = max(sizes, key=lambda k: k * sizes[k]) if sizes else 1
                rows.append(
                    {
                        "figure": f"through the batcher, concurrency {concurrency}",
                        **row,
                        "floor_ms_per_image": floor_ms(flops, weight_bytes, typical, rates),
                        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
                        "max_batch_size": limit.max_batch_size,
                    }
                )
            report["rows"] = rows
            return report
        finally:
            await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--family", choices=["dinov3", "depth-anything"], default="dinov3")
    parser.add_argument("--variant", help="default: the family's in harness.VARIANTS")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256, help="per concurrency")
    parser.add_argument("--batch", type=int, default=32, help="the large bare forward's batch")
    parser.add_argument("--max-batch-size", type=int, help="default: the family's per device")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1 or args.batch < 1:
        parser.error("--concurrency, --requests and --batch must be at least 1")
    args.variant = args.variant or harness.VARIANTS[args.family]
    started = time.perf_counter()
    report = asyncio.run(run(args))
    model, rates = report["model"], report["rates"]
    print(
        f"\n{model['family']}/{model['variant']} on {model['device']} in {model['dtype']}: "
        f"{model['gflops_per_image']} GFLOP per image, {model['memory_mb']:.0f} MB of weights; "
        f"device {rates['matmul_tflops']} TFLOP/s ({model['dtype']} {rates['side']}³ product), "
        f"{rates['copy_gb_per_s']} GB/s (copy)"
    )
    print(f"{'figure':<40}{'img/s':>9}{'ms/img':>9}{'floor':>9}{'of floor':>10}  batches")
    for row in report["rows"]:
        share = row["floor_ms_per_image"] / row["ms_per_image"]
        print(
            f"{row['figure']:<40}{row['images_per_s']:>9.1f}{row['ms_per_image']:>9.2f}"
            f"{row['floor_ms_per_image']:>9.2f}{share:>10.0%}  {row.get('batch_sizes', '')}"
        )
    print("floor: max(FLOPs / matmul rate, weight bytes / batch / copy rate) per image")
    report.update(
        benchmark="bench_batcher_device",
        command=" ".join(sys.argv),
        machine=harness.machine(),
        wall_s=round(time.perf_counter() - started, 1),
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
