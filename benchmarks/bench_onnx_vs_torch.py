"""torch eager vs ONNX Runtime on CPU, full-size architectures with random weights.

For each family: write a full-size random checkpoint in the released layout, export it with
``vision-api export`` (parity gated, fusions, int8), then time the core forward of each
runtime, batch 1 and 4, after warm-up. Each runtime runs in its own process (so their thread
pools never meet); the processes stay loaded and are timed round by round, one forward each
in a rotating order, so that a machine whose speed drifts during the run (seen here: the same
graph up to 40 % slower a few minutes later) slows every runtime alike and the ratios stay fair.
Families split into several graphs (SAM3: vision / text / decoder) also get each graph timed
on its own, on the inputs the pipeline gave it (the decoder: one image's embedding against
the parity options' prompts). In each round a worker waits ``--pause`` seconds (the previous
worker's spinning threads settle), makes one call reported as "after idle", then ``--block``
warm calls that the ratios use (see :func:`interleaved`). Prints a table with ratios measured
in the same run; ``--json PATH`` writes the figures; ``--keep DIR --reuse`` times an earlier
run's artifacts again.

    python benchmarks/bench_onnx_vs_torch.py --families dinov3 depth-anything --repeats 5
    python benchmarks/bench_onnx_vs_torch.py --families grounding-dino --batches 1 \
        --repeats 3 --block 2 --warmup 1
    python benchmarks/bench_onnx_vs_torch.py --families sam3 --batches 1 --repeats 3 \
        --graph-repeats 3 --block 1 --warmup 1 --no-int8

SAM3 is not run by default: its full-size export checks parity against a float64 torch
reference (the longest part of the run) and needs ~14 GB of free memory.
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
from benchmarks.checkpoints import (  # noqa: E402  (after the path is set)
    depth_anything_da3_small,
    dinov3_vits16,
    grounding_dino_tiny,
    sam3_full,
)

PHOTOS = [
    ROOT / "tests" / "assets" / n
    for n in ("chelsea.jpg", "astronaut.png", "coffee.png", "rocket.jpg")
]


# family → builder of a full-size checkpoint
BUILDERS: dict[str, Callable[[Path], str]] = {
    "dinov3": dinov3_vits16,
    "grounding-dino": grounding_dino_tiny,
    "sam3": sam3_full,
    "depth-anything": depth_anything_da3_small,
}
# Families the default run leaves out (see the module docstring).
HEAVY = ("sam3",)


REPLY = "@@bench "  # prefix of the worker's protocol lines on stdout


def _reply(payload: dict[str, object]) -> None:
    print(REPLY + json.dumps(payload), flush=True)


def worker(args: argparse.Namespace) -> None:
    """Serve timing requests for one runtime in this process (see :class:`Worker`).

    Loads the pipeline, warms it up, replies with the graphs it called; then answers
    ``BLOCK forward`` (1 + BLOCK timed forwards of the batch, back to back) and ``BLOCK graph
    NAME`` (the same for one graph on the inputs the pipeline gave it) until stdin closes.
    """
    import torch
    from PIL import Image

    from engines.artifacts import artifact_dir, read_manifest
    from engines.base import LoadRequest, VariantSpec
    from engines.onnx_runtime import OrtCore, OrtOptions
    from engines.registry import default_registry
    from export.parity import exporter

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    family = default_registry().get(args.family)
    request = LoadRequest(VariantSpec("bench", str(args.checkpoint)), "cpu", "float32", threads)
    if args.runtime == "torch":
        pipeline = family.load_torch(request)
    else:
        precision = "int8" if args.runtime == "onnx-int8" else "fp32"
        directory = artifact_dir(args.artifacts, args.family, "bench", precision)
        core = OrtCore(
            directory,
            read_manifest(directory),
            OrtOptions(intra_op_threads=threads, optimization=args.optimization),
        )
        pipeline = family.load_onnx(request, core)
    options = exporter(family).parity_options()[0]
    # One photo repeated: families whose input size follows the image (Depth Anything) batch
    # only equal shapes.
    images = [Image.open(PHOTOS[1]).convert("RGB")] * args.batch
    prepared = [pipeline.prepare(im, options) for im in images]
    # The first forward also records what each graph was given (its first call).
    graph_inputs: dict[str, dict[str, object]] = {}
    run = pipeline.core.run

    def recording(graph: str, inputs: dict[str, object], *, host: bool = True) -> object:
        graph_inputs.setdefault(graph, dict(inputs))
        return run(graph, inputs, host=host)

    pipeline.core.run = recording
    for _ in range(max(args.warmup, 1)):
        pipeline.forward(prepared, options)
    pipeline.core.run = run
    graphs = {g: _rows(i) for g, i in graph_inputs.items()} if len(family.graphs) > 1 else {}
    _reply({"ready": True, "graphs": graphs, "load_avg": os.getloadavg()[0]})
    for line in sys.stdin:
        block, command, *name = line.split()
        times = []
        for _ in range(1 + int(block)):  # the first call after the pause, then a warm block
            started = time.perf_counter()
            if command == "forward":
                pipeline.forward(prepared, options)
            else:
                run(name[0], graph_inputs[name[0]])
            times.append((time.perf_counter() - started) * 1e3)
        _reply({"idle_ms": times[0], "ms": times[1:], "load_avg": os.getloadavg()[0]})


class Worker:
    """One runtime in its own process (so thread pools never meet), timed on request."""

    def __init__(
        self,
        family: str,
        runtime: str,
        batch: int,
        ckpt: Path,
        art: Path,
        args: argparse.Namespace,
        optimization: str = "all",
    ) -> None:
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--family",
            family,
            "--runtime",
            runtime,
            "--batch",
            str(batch),
            "--checkpoint",
            str(ckpt),
            "--artifacts",
            str(art),
            "--warmup",
            str(args.warmup),
            "--optimization",
            optimization,
            "--threads",
            str(args.threads),
        ]
        self.label = runtime if optimization == "all" else f"onnx_{optimization}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        )
        ready = self._read()
        self.graphs: dict[str, int] = ready["graphs"]  # type: ignore[assignment]
        self.load_avg = ready["load_avg"]

    def time(self, command: str, block: int) -> tuple[float, list[float]]:
        """Run ``forward`` or ``graph NAME`` 1 + ``block`` times in the worker, back to back;
        the wall time in ms of the first call (after idleness) and of each call after it."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{block} {command}\n")
        self.process.stdin.flush()
        reply = self._read()
        return float(reply["idle_ms"]), list(reply["ms"])  # type: ignore[arg-type, call-overload]

    def _read(self) -> dict[str, object]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        self.log.seek(0)
        raise RuntimeError(f"{self.label} worker exited:\n{self.log.read()[-3000:]}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()
        self.log.close()


def interleaved(
    workers: list[Worker], command: str, repeats: int, block: int = 3, pause_s: float = 0.5
) -> dict[str, dict[str, float]]:
    """Time ``command`` in every worker, round by round (``repeats`` rounds, the order rotating
    each round), so that a machine whose speed drifts during the run slows every runtime
    alike. Per worker, in ms: median and best of the warm calls, and the median of the first
    calls after ``pause_s`` of idleness (``idle_median_ms``).

    In a round each worker waits ``pause_s`` (the previous worker's thread pool spins for a
    while after its call returns, ORT's and OpenMP's both, and would share the cores), makes
    one call after that idleness, then ``block`` warm calls back to back. On this machine the
    calls after an idle pause run slower for a while (DINOv3 on ORT: ~66 ms for the first two
    calls after 0.5 s idle, ~50 ms back to back; torch ~70 vs ~61 ms), so the ratios use the
    warm calls, as a loaded server runs them; the idle figure is reported beside them.
    """
    times: dict[str, list[tuple[float, list[float]]]] = {w.label: [] for w in workers}
    for round_ in range(repeats):
        shift = round_ % len(workers)
        for w in workers[shift:] + workers[:shift]:
            time.sleep(pause_s)
            times[w.label].append(w.time(command, block))
    return {
        label: {
            "median_ms": statistics.median(ms for _, warm in t for ms in warm),
            "min_ms": min(ms for _, warm in t for ms in warm),
            "idle_median_ms": statistics.median(idle for idle, _ in t),
        }
        for label, t in times.items()
    }


def _rows(inputs: dict[str, object]) -> int:
    """The rows of a graph call: images for the vision graph, prompts for the others."""
    for name in ("text_features", "input_ids", "pixel_values"):
        if name in inputs:
            return len(inputs[name])  # type: ignore[arg-type]
    return 0


def _graph_rows(
    graphs: dict[str, dict[str, dict[str, float]] | None], runtimes: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Per graph: each runtime's median ms per call and the speed-up per row.

    The rows of one call may differ between runtimes (SAM3's vision graph takes one image per
    call on ONNX Runtime, up to four on torch), so speed-ups compare time per row.
    """
    table: dict[str, dict[str, float]] = {}
    for graph, timing in (graphs["torch"] or {}).items():
        entry = {"rows": timing["rows"], "torch_ms": timing["median_ms"]}
        per_row = timing["median_ms"] / max(timing["rows"], 1)
        for runtime in runtimes:
            other = (graphs[runtime] or {})[graph]
            entry[f"{runtime}_rows"] = other["rows"]
            entry[f"{runtime}_ms"] = other["median_ms"]
            entry[f"{runtime}_speedup"] = per_row / (other["median_ms"] / max(other["rows"], 1))
        table[graph] = entry
    return table


LEVELS = ("disable", "basic", "extended", "all")  # ORT graph optimisation levels


def _measure(
    family: str,
    batch: int,
    ckpt: Path,
    art: Path,
    runtimes: tuple[str, ...],
    args: argparse.Namespace,
) -> dict[str, object]:
    """Every runtime's worker started, then timed round by round (:func:`interleaved`)."""
    workers: list[Worker] = []
    try:
        for runtime in ("torch", *runtimes):
            workers.append(Worker(family, runtime, batch, ckpt, art, args))
        if args.levels:
            for level in LEVELS[:-1]:  # "all" is the plain onnx worker
                workers.append(Worker(family, "onnx", batch, ckpt, art, args, level))
        row: dict[str, object] = {
            "load_avg": {w.label: w.load_avg for w in workers},
            "interleaved": True,
        }
        nan = {"median_ms": float("nan")}
        forward = (
            interleaved(workers, "forward", args.repeats, args.block, args.pause)
            if args.repeats > 0
            else {}
        )
        torch_ms = forward.get("torch", nan)["median_ms"]
        row["torch_ms"] = torch_ms
        row["idle_ms"] = {label: t["idle_median_ms"] for label, t in forward.items()}
        for runtime in runtimes:
            row[f"{runtime}_ms"] = forward.get(runtime, nan)["median_ms"]
            row[f"{runtime}_speedup"] = torch_ms / row[f"{runtime}_ms"]  # type: ignore[operator]
        if args.levels:
            for level in LEVELS:
                label = "onnx" if level == "all" else f"onnx_{level}"
                row[f"onnx_{level}_ms"] = forward.get(label, nan)["median_ms"]
        timed = workers[: 1 + len(runtimes)]
        if workers[0].graphs:
            graphs: dict[str, dict[str, dict[str, float]]] = {w.label: {} for w in timed}
            for graph in workers[0].graphs:
                times = interleaved(
                    timed,
                    f"graph {graph}",
                    args.graph_repeats or args.repeats,
                    args.block,
                    args.pause,
                )
                for w in timed:
                    graphs[w.label][graph] = {**times[w.label], "rows": w.graphs[graph]}
            row["graphs"] = _graph_rows(graphs, runtimes)  # type: ignore[arg-type]
        row["load_avg_end"] = os.getloadavg()[0]
        return row
    finally:
        for w in workers:
            w.close()


def _reusable(art: Path, family: str, ckpt: Path, int8: bool) -> list[Path] | None:
    """The manifests of an earlier export of this checkpoint under ``art``, if complete."""
    from engines.artifacts import MANIFEST, artifact_dir, read_manifest, weights_sha256

    paths = [
        artifact_dir(art, family, "bench", p) / MANIFEST
        for p in (("fp32", "int8") if int8 else ("fp32",))
    ]
    if not all(p.exists() for p in paths):
        return None
    weights = weights_sha256(ckpt)
    if any(read_manifest(p.parent).weights_sha256 != weights for p in paths):
        return None
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--families",
        nargs="*",
        choices=list(BUILDERS),
        default=[f for f in BUILDERS if f not in HEAVY],
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="rounds of timed whole forwards (0: time the graphs only)",
    )
    parser.add_argument(
        "--block", type=int, default=3, help="warm calls per worker and round, after its first call"
    )
    parser.add_argument(
        "--graph-repeats",
        type=int,
        default=0,
        help="timed calls per graph of multi-graph families (default: --repeats)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--no-int8", action="store_true", help="no int8 artifact or timing")
    parser.add_argument(
        "--no-optimize", action="store_true", help="export without ORT's transformer fusions"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="write checkpoints and artifacts here (kept) instead of a temporary directory",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: time the artifacts "
        "an earlier run exported from the same checkpoint instead of exporting",
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.5,
        help="seconds between two timed calls (spinning thread pools settle)",
    )
    parser.add_argument(
        "--levels", action="store_true", help="also compare ORT optimisation levels"
    )
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
    runtimes = ("onnx",) if args.no_int8 else ("onnx", "onnx-int8")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        for family_name in args.families:
            ckpt, art = Path(tmp) / family_name / "ckpt", Path(tmp) / family_name / "art"
            if not (ckpt / "config.json").exists():
                ckpt.mkdir(parents=True, exist_ok=True)
                BUILDERS[family_name](ckpt)
            family = default_registry().get(family_name)
            started = time.perf_counter()
            manifests = _reusable(art, family_name, ckpt, not args.no_int8) if args.reuse else None
            if manifests is None:
                manifests = export_variant(
                    family,
                    VariantSpec("bench", str(ckpt)),
                    ExportOptions(
                        out=art,
                        quantize=None if args.no_int8 else "int8",
                        images=PHOTOS,
                        optimize=not args.no_optimize,
                    ),
                )
            export_s = time.perf_counter() - started
            parity = [json.loads(p.read_text())["parity"] for p in manifests]
            for batch in args.batches:
                row = {
                    "family": family_name,
                    "batch": batch,
                    "export_s": round(export_s, 1),
                    "parity_fp32": parity[0],
                    "parity_int8": parity[1] if len(parity) > 1 else None,
                }
                row.update(_measure(family_name, batch, ckpt, art, runtimes, args))
                rows.append(row)
    print(
        f"\n{'family':<16}{'batch':>6}{'torch ms':>11}{'onnx ms':>10}{'x':>7}"
        f"{'int8 ms':>10}{'x':>7}"
    )
    for r in rows:
        print(
            f"{r['family']:<16}{r['batch']:>6}{r['torch_ms']:>11.1f}{r['onnx_ms']:>10.1f}"
            f"{r['onnx_speedup']:>7.2f}{r.get('onnx-int8_ms', float('nan')):>10.1f}"
            f"{r.get('onnx-int8_speedup', float('nan')):>7.2f}"
        )
        for graph, g in r.get("graphs", {}).items():
            print(
                f"  {graph + ' (' + str(g['rows']) + ' rows)':<20}{g['torch_ms']:>11.1f}"
                f"{g['onnx_ms']:>10.1f}{g['onnx_speedup']:>7.2f}"
                f"{g.get('onnx-int8_ms', float('nan')):>10.1f}"
                f"{g.get('onnx-int8_speedup', float('nan')):>7.2f}"
            )
        if r.get("graphs"):
            print("    graphs: ms per call; speed-ups per row (image or prompt)")
        idle = {k: round(v, 1) for k, v in r.get("idle_ms", {}).items()}
        print(f"    first call after {args.pause} s idle (ms): {idle}")
        print(f"    load average (1 min) at each worker's start: {r['load_avg']}")
        levels = {
            level: round(r[f"onnx_{level}_ms"], 1)
            for level in ("disable", "basic", "extended", "all")
            if f"onnx_{level}_ms" in r
        }
        if levels:
            print(f"    ORT optimisation levels (ms): {levels}")
        print(f"    parity fp32 {r['parity_fp32']}  int8 {r['parity_int8']}")
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
