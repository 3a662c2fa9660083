"""torch and ONNX Runtime in one process: does the pool keep them from fighting over cores?

One pool serves DINOv3 ViT-S/16 twice — variant ``torch`` on torch, variant ``onnx`` from an
ONNX artifact of the same weights — and receives ``--requests`` concurrent requests
alternating between them. Measured with one compute lane (the default: one forward at a time,
each runtime using every core) and with two lanes (both runtimes computing at once, each
with every core: the oversubscribed case). Prints the wall time and the ratio.

    python benchmarks/bench_mixed_runtimes.py --requests 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def serve(pool: object, requests: int) -> float:
    from PIL import Image

    from engines.families.dinov3.options import Dinov3Options

    image = Image.open(ROOT / "tests" / "assets" / "astronaut.png").convert("RGB")
    options = Dinov3Options()
    for variant in ("torch", "onnx"):  # load and warm up outside the timing
        await pool.infer("dinov3", variant, [image], options)  # type: ignore[attr-defined]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            pool.infer("dinov3", ("torch", "onnx")[i % 2], [image], options)  # type: ignore[attr-defined]
            for i in range(requests)
        )
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from benchmarks.checkpoints import dinov3_vits16
    from engines.base import VariantSpec
    from engines.pool import ModelPool, PoolConfig
    from engines.registry import VariantTable, default_registry
    from export.onnx_export import ExportOptions, export_variant

    with tempfile.TemporaryDirectory() as tmp:
        ckpt, art = Path(tmp) / "ckpt", Path(tmp) / "art"
        ckpt.mkdir()
        dinov3_vits16(ckpt)
        family = default_registry().get("dinov3")
        export_variant(family, VariantSpec("onnx", str(ckpt)), ExportOptions(out=art))
        table = {
            "dinov3": VariantTable(
                "torch",
                {"torch": VariantSpec("torch", str(ckpt)), "onnx": VariantSpec("onnx", str(ckpt))},
            )
        }

        async def measure(lanes: int) -> float:
            pool = ModelPool(
                default_registry(),
                PoolConfig(engine="auto", artifacts_dir=art, compute_workers=lanes, variants=table),
            )
            try:
                return await serve(pool, args.requests)
            finally:
                await pool.close()

        results = {lanes: asyncio.run(measure(lanes)) for lanes in (1, 2)}
    print(f"{args.requests} requests alternating torch / ONNX Runtime, {os.cpu_count()} cores")
    print(f"  one compute lane (default):  {results[1]:.2f} s")
    print(f"  two compute lanes:           {results[2]:.2f} s")
    print(f"  two lanes / one lane:        {results[2] / results[1]:.2f}x the time")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": datetime.now(UTC).isoformat(),
                    "cpus": os.cpu_count(),
                    "requests": args.requests,
                    "seconds": results,
                    "load": os.getloadavg(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
