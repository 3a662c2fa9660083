"""Depth Anything 3 scenes: one N-view forward vs N single-view forwards (time, peak memory).

DA3-small at full size with random weights (the compute is the real one), views of 504 x 378
network pixels (a 4:3 photo at the default process_res). For N = 2, 4, 8:

- ``scene``: ``Da3Network.forward_scene`` over the N views at once (what
  ``POST /inference/depth-anything/scene`` runs): cross-view attention over N x 972 tokens,
  and poses for every view in one frame.
- ``single``: N forwards of one view each (N single-image requests, one after another): no
  shared scale, no shared frame.

Each (mode, N) runs in a fresh subprocess, so that its peak resident memory (``ru_maxrss``)
is its own; the figure reported is that peak minus the process's memory after loading the
model (the activations and workspace of the run). Prints a table and the ratio scene / single
for both; ``--json`` writes the figures.

    python benchmarks/bench_da3_scene.py --views 2 4 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEIGHT, WIDTH = 378, 504  # a 4:3 view at process_res 504: 27 x 36 patches


def _rss_mb() -> float:
    """This process's current resident memory in MB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(mode: str, views: int, repeats: int, threads: int) -> dict[str, Any]:
    """One (mode, views) measurement in this process: median seconds, peak extra MB."""
    import torch

    from engines.families.depth_anything.da3 import PRESETS, Da3Network

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = Da3Network(PRESETS["da3-small"]).eval()
    pixels = torch.randn(views, 3, HEIGHT, WIDTH)
    loaded_mb = _rss_mb()

    def once() -> None:
        with torch.inference_mode():
            if mode == "scene":
                network.forward_scene(pixels)
            else:
                for index in range(views):
                    network(pixels[index : index + 1])

    once()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "mode": mode,
        "views": views,
        "seconds": median(times),
        "peak_extra_mb": peak_mb - loaded_mb,
    }


def measure(mode: str, views: int, repeats: int, threads: int) -> dict[str, Any]:
    """:func:`run_case` in a fresh interpreter (its own peak memory)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--case",
            mode,
            str(views),
            "--repeats",
            str(repeats),
            "--threads",
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse arguments, measure every case, print the table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--case", nargs=2, metavar=("MODE", "VIEWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.repeats, args.threads)))
        return
    rows = []
    print(f"DA3-small, {WIDTH}x{HEIGHT} views, {args.threads} threads, median of {args.repeats}")
    print(
        f"{'N':>3} {'scene s':>9} {'N x single s':>13} {'time ratio':>11} "
        f"{'scene MB':>9} {'single MB':>10} {'memory ratio':>13}"
    )
    for views in args.views:
        scene = measure("scene", views, args.repeats, args.threads)
        single = measure("single", views, args.repeats, args.threads)
        row = {
            "views": views,
            "scene_s": scene["seconds"],
            "single_s": single["seconds"],
            "time_ratio": scene["seconds"] / single["seconds"],
            "scene_peak_extra_mb": scene["peak_extra_mb"],
            "single_peak_extra_mb": single["peak_extra_mb"],
            "memory_ratio": scene["peak_extra_mb"] / max(single["peak_extra_mb"], 1e-9),
        }
        rows.append(row)
        print(
            f"{views:>3} {row['scene_s']:>9.2f} {row['single_s']:>13.2f} "
            f"{row['time_ratio']:>10.2f}x {row['scene_peak_extra_mb']:>9.0f} "
            f"{row['single_peak_extra_mb']:>10.0f} {row['memory_ratio']:>12.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "view_size": [WIDTH, HEIGHT],
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
