"""Two commits of our server side by side under the same load: did a change pay, did it cost?

Checks out ``--before`` (a git ref) into a temporary worktree, starts our server from it and
from this tree (``--after``: the working tree, uncommitted changes included), both on the same
full-size random-weight checkpoint (``checkpoints.py``) and settings, and at each concurrency
runs interleaved rounds (which server goes first alternates; a short pause before each) of
the same requests as ``bench_serving.py``. Prints per side p50 latency and images per second,
and after / before from the same run: per round (paired) and over all rounds. ``--json OUT``
writes every figure. Stops both servers and removes the worktree however it ends.

    python benchmarks/bench_revisions.py --before HEAD~2 --family dinov3 --concurrency 1 4 16
    python benchmarks/bench_revisions.py --before c16d32e --ours-env VISION_API_ENGINE=onnx \
        --ours-env VISION_API_ARTIFACTS_DIR=/tmp/vision-bench-checkpoints/artifacts
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import checkpoints, harness  # noqa: E402  (after the path is set)


def _worktree(ref: str, into: Path) -> str:
    """Check ``ref`` out (detached) into ``into``; its short commit id."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), ref],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=into,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


def _drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )


async def _compare(
    servers: dict[str, harness.ServerProcess], args: argparse.Namespace
) -> dict[str, Any]:
    bodies = harness.request_bodies(args.family, args.variant)
    urls = {name: f"{s.url}/inference/{args.family}" for name, s in servers.items()}
    rows: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=args.request_timeout_s) as client:
        for url in urls.values():  # loads the model, warms both sides up
            await harness.run_round(client, url, bodies, 1, args.warmup)
        for concurrency in args.concurrency:
            for url in urls.values():  # one untimed pass at this concurrency
                await harness.run_round(client, url, bodies, concurrency, concurrency)
            rounds = await harness.interleaved_rounds(
                client,
                urls,
                dict.fromkeys(urls, bodies),
                concurrency,
                args.rounds,
                args.requests,
                args.pause_s,
            )
            summary = {name: harness.summarize(r) for name, r in rounds.items()}
            paired_speed = [
                a.images / a.wall_s / (b.images / b.wall_s)
                for a, b in zip(rounds["after"], rounds["before"], strict=True)
                if a.wall_s and b.wall_s and b.images
            ]
            paired_p50 = [
                harness.percentile(a.latencies_ms, 50) / harness.percentile(b.latencies_ms, 50)
                for a, b in zip(rounds["after"], rounds["before"], strict=True)
                if a.latencies_ms and b.latencies_ms
            ]
            rows[str(concurrency)] = {
                **summary,
                "images_per_s_ratio": summary["after"]["images_per_s"]
                / summary["before"]["images_per_s"],
                "paired_images_per_s_ratio_median": harness.percentile(paired_speed, 50),
                "p50_ratio": summary["after"]["p50_ms"] / summary["before"]["p50_ms"],
                "paired_p50_ratio_median": harness.percentile(paired_p50, 50),
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="a git ref: the commit to compare with")
    parser.add_argument("--family", choices=list(harness.VARIANTS), default="dinov3")
    parser.add_argument("--variant", help="default: the family's in harness.VARIANTS")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per side and round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per concurrency")
    parser.add_argument("--warmup", type=int, default=8, help="sequential requests per side")
    parser.add_argument("--pause-s", type=float, default=0.5)
    parser.add_argument("--request-timeout-s", type=float, default=900.0)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--checkpoints", type=Path, default=checkpoints.DEFAULT_OUT)
    parser.add_argument(
        "--ours-env", action="append", default=[], metavar="KEY=VALUE", help="both sides"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--concurrency, --requests, --rounds and --warmup must be at least 1")
    args.variant = args.variant or harness.VARIANTS[args.family]
    env = harness.env_pairs(args.ours_env)
    config = checkpoints.prepare(
        args.checkpoints, [harness.CHECKPOINT_NAMES[(args.family, args.variant)]]
    )
    harness.stop_on_sigterm()
    started = time.perf_counter()
    servers: dict[str, harness.ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="bench-revisions-") as scratch:
        tree = Path(scratch) / "before"
        before = _worktree(args.before, tree)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as empty:
                env = {"VISION_API_ARTIFACTS_DIR": empty, **env}
                servers["before"] = harness.start_ours(config, env, tree=tree, name="before")
                servers["after"] = harness.start_ours(config, env, name="after")
                for server in servers.values():
                    server.wait_healthy(args.start_timeout_s)
                rows = asyncio.run(_compare(servers, args))
        finally:
            for server in servers.values():
                server.stop()
            _drop_worktree(tree)
    machine = harness.machine()
    print(
        f"\n{args.family}/{args.variant}: before = {before}, after = {machine['commit']}"
        f"{' + uncommitted changes' if machine['uncommitted'] else ''}"
    )
    print(
        f"{'concurrency':>11}{'before img/s':>14}{'after img/s':>13}{'ratio':>8}{'paired':>8}"
        f"{'before p50':>12}{'after p50':>11}{'ratio':>8}{'paired':>8}"
    )
    for concurrency, row in rows.items():
        b, a = row["before"], row["after"]
        print(
            f"{concurrency:>11}{b['images_per_s']:>14.2f}{a['images_per_s']:>13.2f}"
            f"{row['images_per_s_ratio']:>8.2f}{row['paired_images_per_s_ratio_median']:>8.2f}"
            f"{b['p50_ms']:>12.1f}{a['p50_ms']:>11.1f}{row['p50_ratio']:>8.2f}"
            f"{row['paired_p50_ratio_median']:>8.2f}"
        )
    print("ratios: after / before; paired: the median over rounds of the same round's ratio")
    fields = {
        "before": before,
        "family": args.family,
        "variant": args.variant,
        "env": harness.env_pairs(args.ours_env),
        "requests_per_round": args.requests,
        "rounds": args.rounds,
    }
    harness.write_report(args.json, "bench_revisions", started, fields, {"rows": rows}, machine)


if __name__ == "__main__":
    main()
