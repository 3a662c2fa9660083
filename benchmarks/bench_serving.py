"""Our server against the seed-style baseline under load, side by side in one run.

Starts our server (``python -m service.cli serve``, no Redis) and ``baseline_server.py`` as
subprocesses on free loopback ports, on the full-size random-weight checkpoints of
``checkpoints.py`` (written first if missing), waits for both, warms both up, then for each
concurrency runs interleaved rounds: in each round each server gets the same ``--requests``
requests (the real photos of ``tests/assets``, see :func:`harness.request_bodies`) with
``concurrency`` in flight, ours first in even rounds and the baseline first in odd ones, a
short pause before each, so that a machine whose speed drifts slows both alike. Prints per
server p50 / p95 latency and images per second, and ours / baseline from the same run;
``--json OUT`` writes every figure. Stops the servers however it ends.

Our server runs out of the box (``engine`` and ``dtype`` auto) with an empty artifacts
directory, so it serves torch unless ``--ours-env VISION_API_ARTIFACTS_DIR=DIR`` points at an
export (``vision-api export dinov3 --config CONFIG --out DIR``). On a CPU with bf16 units
``auto`` then races the artifact against torch bf16 at load and may keep torch: add
``--ours-env VISION_API_ENGINE=onnx`` for the artifact's own figures.

    python benchmarks/bench_serving.py --family dinov3 --json benchmarks/results/serving.json
    python benchmarks/bench_serving.py --family depth-anything --concurrency 4 16
    python benchmarks/bench_serving.py --family sam3 --concurrency 1 --requests 1 --rounds 1

DA3-small against the official package's own ``DepthAnything3.inference`` (``--variant small``)
needs an environment where that API imports: torch with a working torchvision, the package
and its inference-time imports. Both servers run in it (``sys.executable``), so both use the
same torch, e.g. with torch 2.14.1 and torchvision 0.29.1 (this machine's working pair):

    python -m venv /tmp/da3venv && . /tmp/da3venv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-deps depth-anything-3==0.1.1
    pip install addict einops omegaconf evo scipy imageio moviepy==1.0.3 \
        opencv-python-headless pycolmap trimesh plyfile -e '.[bench]'
    python benchmarks/bench_serving.py --family depth-anything --variant small
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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


async def _warm_up(
    servers: list[harness.ServerProcess], url_path: str, bodies: list[bytes], count: int
) -> dict[str, Any]:
    """``count`` sequential requests to each server; the first answer of each, summarised."""
    import httpx

    seen: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=None) as client:
        for server in servers:
            for i in range(count):
                response = await client.post(
                    server.url + url_path,
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                    timeout=3600,  # the first request loads the model
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{server.name} answered {response.status_code} while warming up: "
                        f"{response.text[:500]}\n{server.tail()}"
                    )
                if i == 0:
                    body = response.json()
                    seen[server.name] = {
                        k: body.get(k) for k in ("model_type", "variant", "engine", "device")
                    }
    return seen


async def _warm_lanes(
    servers: list[harness.ServerProcess], url_path: str, bodies: list[bytes], args: Any
) -> None:
    """One untimed run per concurrency above 1, so that each server has started whatever
    threads that many requests in flight make it start before any of them is timed."""
    import httpx

    async with httpx.AsyncClient(timeout=args.request_timeout_s) as client:
        for concurrency in sorted(c for c in set(args.concurrency) if c > 1):
            for server in servers:
                run = await harness.run_round(
                    client, server.url + url_path, bodies, concurrency, concurrency
                )
                if run.errors:
                    raise RuntimeError(f"{server.name} failed while warming up: {run.errors[0]}")


async def measure(
    servers: dict[str, harness.ServerProcess],
    url_path: str,
    bodies: list[bytes],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every concurrency's interleaved rounds; one row per concurrency."""
    import httpx

    rows = []
    names = list(servers)
    limits = httpx.Limits(max_connections=max(args.concurrency), max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=args.request_timeout_s, limits=limits) as client:
        for concurrency in args.concurrency:
            load: list[float] = []
            rounds = await harness.interleaved_rounds(
                client,
                {name: servers[name].url + url_path for name in names},
                dict.fromkeys(names, bodies),
                concurrency,
                args.rounds,
                args.requests,
                args.pause_s,
                after_round=functools.partial(_read_load, load),
            )
            row: dict[str, Any] = {"concurrency": concurrency, "load_avg": load}
            for name in names:
                row[name] = harness.summarize(rounds[name])
            ours, base = row["ours"], row["baseline"]
            row["throughput_ratio"] = _ratio(ours["images_per_s"], base["images_per_s"])
            row["p50_ratio"] = _ratio(ours["p50_ms"], base["p50_ms"])
            rows.append(row)
            _print_row(row)
    return rows


def _read_load(readings: list[float]) -> None:
    readings.append(os.getloadavg()[0])


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _print_row(row: dict[str, Any]) -> None:
    cells = []
    for name in ("ours", "baseline"):
        s = row[name]
        errors = f" ({s['error_count']} errors)" if s["error_count"] else ""
        cells.append(
            f"{s['images_per_s']:>7.2f} img/s p50 {s['p50_ms']:>8.1f} p95 {s['p95_ms']:>8.1f}"
            f"{errors}"
        )
    print(
        f"c={row['concurrency']:<3} ours {cells[0]} | baseline {cells[1]} | "
        f"throughput {row['throughput_ratio']:.2f}x  p50 {row['p50_ratio']:.2f}x",
        flush=True,
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| concurrency | ours img/s | ours p50 / p95 ms | baseline img/s "
        "| baseline p50 / p95 ms | throughput ours / baseline | p50 ours / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        o, b = r["ours"], r["baseline"]
        lines.append(
            f"| {r['concurrency']} | {o['images_per_s']:.2f} | {o['p50_ms']:.0f} / "
            f"{o['p95_ms']:.0f} | {b['images_per_s']:.2f} | {b['p50_ms']:.0f} / "
            f"{b['p95_ms']:.0f} | {r['throughput_ratio']:.2f}x | {r['p50_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=list(harness.VARIANTS), default="dinov3")
    parser.add_argument(
        "--variant",
        help="the variant to serve (default: the family's in harness.VARIANTS); "
        "depth-anything: v2-small (transformers on both sides) or small (DA3-small; the "
        "baseline runs the official package)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per server and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per concurrency")
    parser.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="sequential requests per server (at least 1: loads the model); when above 0, "
        "also one untimed run at each concurrency",
    )
    parser.add_argument("--pause-s", type=float, default=1.0, help="pause before each run")
    parser.add_argument("--request-timeout-s", type=float, default=900.0)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=checkpoints.DEFAULT_OUT,
        help="benchmarks/checkpoints.py's output directory (written if missing)",
    )
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for our server, e.g. VISION_API_DTYPE=bfloat16 (repeatable)",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the baseline, e.g. BASELINE_DA3_AUTOCAST=off (repeatable)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1 or args.rounds < 1:
        parser.error("--concurrency, --requests and --rounds must be at least 1")
    user_env = harness.env_pairs(args.ours_env)

    variant = args.variant or harness.VARIANTS[args.family]
    name = harness.CHECKPOINT_NAMES.get((args.family, variant))
    if name is None:
        parser.error(f"no benchmark checkpoint for {args.family} {variant}")
    config = checkpoints.prepare(args.checkpoints, [name])
    checkpoint = checkpoints.ensure(args.checkpoints, name)
    bodies = harness.request_bodies(args.family, variant)
    url_path = f"/inference/{args.family}"
    harness.stop_on_sigterm()
    started = time.perf_counter()
    servers: dict[str, harness.ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as empty:
        # An empty artifacts directory unless given: out of the box, no export.
        ours_env = {"VISION_API_ARTIFACTS_DIR": empty, **user_env}
        try:
            servers["ours"] = harness.start_ours(config, ours_env)
            servers["baseline"] = harness.start_baseline(
                {args.family: checkpoint}, env=harness.env_pairs(args.baseline_env)
            )
            for server in servers.values():
                server.wait_healthy(args.start_timeout_s)
            first = asyncio.run(
                _warm_up(list(servers.values()), url_path, bodies, max(args.warmup, 1))
            )
            print(f"serving: {first}", flush=True)
            if args.warmup > 0:
                asyncio.run(_warm_lanes(list(servers.values()), url_path, bodies, args))
            rows = asyncio.run(measure(servers, url_path, bodies, args))
            status = harness.model_status(servers["ours"].url, args.family, variant)
        finally:
            for server in servers.values():
                server.stop()
    print()
    print(_table(rows))
    print(f"\nours: {json.dumps(status)}")
    fields = {
        "family": args.family,
        "variant": variant,
        "ours_env": user_env,
        "baseline_env": harness.env_pairs(args.baseline_env),
        "first_response": first,
        "ours_model_status": status,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
    }
    harness.write_report(args.json, "bench_serving", started, fields, {"rows": rows})


if __name__ == "__main__":
    main()
