"""Our pool with glibc keeping freed memory (the default) against glibc's defaults.

``engines/memory.py`` has every serving process serve large blocks from glibc's heap and keep
them when freed, instead of mapping (and zero-filling) a forward's large activations anew each
time. The switch is process-wide, so each side runs in its own process: a worker loads the
family's full-size benchmark checkpoint (``benchmarks/checkpoints.py``) in a ``ModelPool``
with ``keep_freed_memory`` on or off, sends one warm-up request and then ``--requests`` requests
one at a time, each one real photo (the four of ``tests/assets`` in turn), and reports the
seconds per request and the process's user and system CPU seconds over them. Workers alternate
(off, on, on, off, ...) ``--pairs`` times per family, so a drifting machine slows both alike.

    python benchmarks/bench_freed_memory.py --families grounding-dino depth-anything-v2 dinov3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)

# benchmark checkpoint name → (model type, variant, options)
TARGETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "grounding-dino": ("grounding-dino", "tiny", {"prompts": harness.GROUNDING_DINO_PROMPTS}),
    "depth-anything-v2": ("depth-anything", "v2-small", {}),
    "depth-anything": ("depth-anything", "small", {}),
    "dinov3": ("dinov3", "vits16", {}),
}


def worker(name: str, keep: bool, requests: int, checkpoint: Path) -> dict[str, Any]:
    """One process's figures: load, warm up, ``requests`` requests one at a time."""
    from PIL import Image

    from engines.base import VariantSpec
    from engines.pool import ModelPool, PoolConfig
    from engines.registry import VariantTable, default_registry

    model_type, variant, fields = TARGETS[name]
    pool = ModelPool(
        default_registry(),
        PoolConfig(
            variants={
                model_type: VariantTable(variant, {variant: VariantSpec(variant, str(checkpoint))})
            },
            dtype="float32",
            cpu_bf16="off",
            keep_freed_memory=keep,
        ),
    )
    options_type = pool.registry.get(model_type).options_type
    options = options_type(**fields)
    photos = [Image.open(p).convert("RGB") for p in harness.PHOTOS]

    async def run() -> list[float]:
        await pool.infer(model_type, variant, [photos[0]], options)  # warm-up (pool.load ran first)
        seconds = []
        for i in range(requests):
            started = time.perf_counter()
            await pool.infer(model_type, variant, [photos[i % len(photos)]], options)
            seconds.append(time.perf_counter() - started)
        return seconds

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(pool.load(model_type, variant))
        before = os.times()
        seconds = loop.run_until_complete(run())
        after = os.times()
        loop.run_until_complete(pool.close())
    finally:
        loop.close()
    return {
        "keep_freed_memory": keep,
        "seconds": seconds,
        "total_s": sum(seconds),
        "user_s": after.user - before.user,
        "system_s": after.system - before.system,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(TARGETS), default=["grounding-dino"])
    parser.add_argument("--requests", type=int, default=4, help="timed requests per worker")
    parser.add_argument("--pairs", type=int, default=2, help="off/on worker pairs per family")
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "KEEP", "CHECKPOINT"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        name, keep, checkpoint = args.worker
        print(json.dumps(worker(name, keep == "on", args.requests, Path(checkpoint))))
        return

    result: dict[str, Any] = {
        "benchmark": "bench_freed_memory",
        "command": " ".join(sys.argv),
        "machine": harness.machine(),
        "families": {},
    }
    for name in args.families:
        checkpoint = checkpoints.ensure(args.checkpoints, name)
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for pair in range(args.pairs):
            for mode in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                command = [sys.executable, __file__, "--worker", name, mode, str(checkpoint)]
                command += ["--requests", str(args.requests)]
                env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
                out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs[mode].append(run)
                print(
                    f"{name:18s} keep_freed_memory {mode:3s}: {run['total_s']:7.2f} s for "
                    f"{args.requests} requests (user {run['user_s']:.1f} s, system "
                    f"{run['system_s']:.1f} s)",
                    flush=True,
                )
        off = statistics.median(r["total_s"] for r in runs["off"])
        on = statistics.median(r["total_s"] for r in runs["on"])
        system = {m: statistics.median(r["system_s"] for r in runs[m]) for m in runs}
        result["families"][name] = {"runs": runs, "speedup": off / on, "median_system_s": system}
        print(
            f"{name}: {off / args.requests:.2f} → {on / args.requests:.2f} s a request, "
            f"{off / on:.2f}x; system time {system['off']:.1f} → {system['on']:.1f} s",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
