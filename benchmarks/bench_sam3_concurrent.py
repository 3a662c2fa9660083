"""SAM3: several clients send the same new image at once, each with its own prompt.

A user interface that sends one request per prompt, or several users segmenting one shared
image, sends the same image concurrently. Full-size SAM3 (``Sam3Config()`` defaults, random
weights) through the real pool (``ModelPool.infer``: batcher, compute thread, helper threads),
``--clients`` requests started together, one prompt each, the same photo decoded separately
for each, on a fresh image each round:

- ``cache``: the embedding cache at its default budget (what the server runs): the image is
  encoded once, the other requests take it from the cache at their forward;
- ``no cache``: ``image_cache_mb=0``: every request encodes the image.

Vision-encoder calls are counted per round. Prints the wall time of each round, the ratio, and
``--json`` writes the figures.

    python benchmarks/bench_sam3_concurrent.py --clients 4 --rounds 2 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

PROMPTS = ["cat", "person", "rocket", "cup", "flag", "tree", "car", "dog"]


async def one_round(pool: Any, image: Image.Image, clients: int) -> tuple[float, int]:
    """``clients`` concurrent one-prompt requests for ``image``: seconds, vision calls."""
    from engines.families.sam3.options import Sam3Options

    pipeline = (await pool.load("sam3")).pipeline
    run = pipeline.core.run
    vision_calls = 0

    def counting(graph: str, inputs: Any, host: bool = True) -> Any:
        nonlocal vision_calls
        vision_calls += graph == "vision"
        return run(graph, inputs, host=host)

    pipeline.core.run = counting
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                pool.infer(
                    "sam3",
                    None,
                    [image.copy()],
                    Sam3Options(prompts=[PROMPTS[i % len(PROMPTS)]], output_format="rle"),
                )
                for i in range(clients)
            )
        )
        return time.perf_counter() - started, vision_calls
    finally:
        del pipeline.core.run


def measure(checkpoint: Path, cache_mb: float | None, args: argparse.Namespace) -> dict[str, Any]:
    from engines.base import VariantSpec
    from engines.pool import ModelPool, PoolConfig
    from engines.registry import VariantTable, default_registry

    spec = VariantSpec("sam3", str(checkpoint))
    config = PoolConfig(
        variants={"sam3": VariantTable("sam3", {"sam3": spec})},
        dtype=args.dtype,
        image_cache_mb=cache_mb,
    )
    pool = ModelPool(default_registry(), config)
    rounds: list[dict[str, Any]] = []
    try:
        for index in range(args.rounds):
            # A new image each round (another photo, or one rotated): never cached before.
            path = harness.PHOTOS[index % len(harness.PHOTOS)]
            photo = Image.open(path).convert("RGB")
            image = photo.rotate(90 * (index // len(harness.PHOTOS)), expand=True)
            seconds, vision = asyncio.run(one_round(pool, image, args.clients))
            rounds.append({"seconds": seconds, "vision_calls": vision, "photo": path.name})
            print(
                f"  cache {cache_mb!s:>5}: {seconds:6.1f} s, vision encoder x{vision}", flush=True
            )
    finally:
        asyncio.run(pool.close())
    return {"rounds": rounds, "median_s": statistics.median(r["seconds"] for r in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    path = checkpoints.ensure(args.checkpoints, "sam3")
    print("no cache (every request encodes the image):")
    uncached = measure(path, 0, args)
    print("cache (the server's default budget):")
    cached = measure(path, None, args)
    ratio = uncached["median_s"] / cached["median_s"]
    print(
        f"{args.clients} concurrent requests for one new image: {cached['median_s']:.1f} s "
        f"with the cache vs {uncached['median_s']:.1f} s without: {ratio:.2f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "bench_sam3_concurrent",
                    "machine": harness.machine(),
                    "clients": args.clients,
                    "dtype": args.dtype,
                    "no_cache": uncached,
                    "cache": cached,
                    "ratio": ratio,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
