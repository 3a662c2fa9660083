"""Our DA3 network vs the reference package's, same weights, same input, CPU fp32.

Writes a full-size random DA3 checkpoint in the official layout (built by the reference from
its preset), then starts one worker process per implementation: ``ours`` loads it with
``load_da3``, ``reference`` builds ``DepthAnything3Net`` and loads the same tensors. The
workers stay alive and take turns (alternating which goes first), so load from anything else
on the machine hits both alike; each runs ``--warmup`` forwards, then ``--runs`` timed ones.
Prints a table, the ratios ours / reference of the median wall and CPU times (CPU time is the
steadier figure on a shared machine), and how far the depths differ; ``--json PATH`` writes
the figures. Needs ``requirements-oracle.txt``.

    python benchmarks/bench_da3_vs_reference.py --runs 7 --json /tmp/da3.json
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMPLEMENTATIONS = ("ours", "reference")


def write_checkpoint(preset: str, directory: Path) -> int:
    """Seeded random weights from the reference's preset, saved as the official layout."""
    import torch
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_object(load_config(MODEL_REGISTRY[preset]))
    state, seen = {}, set()
    for key, tensor in sorted(model.state_dict().items()):
        if tensor.data_ptr() not in seen:  # shared tensors once, as save_model stores them
            seen.add(tensor.data_ptr())
            state[f"model.{key}"] = tensor.contiguous()
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"model_name": preset}))
    return sum(p.numel() for p in model.parameters())


def load_reference(preset: str, directory: Path):
    """The reference network with the checkpoint's tensors (only shared aliases missing)."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY
    from safetensors.torch import load_file

    model = create_object(load_config(MODEL_REGISTRY[preset]))
    tensors = load_file(directory / "model.safetensors")
    state = {k.removeprefix("model."): v for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("output_conv2_aux" in k for k in missing), (missing, unexpected)
    return model.eval()


def worker(args: argparse.Namespace) -> None:
    """Load one implementation, then answer ``run`` / ``depth PATH`` / ``quit`` on stdin."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    height, width = args.size
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    if args.worker == "ours":
        from engines.families.depth_anything.da3 import load_da3

        network, _ = load_da3(args.checkpoint)

        def forward() -> torch.Tensor:
            return network(pixels).depth[0]
    else:
        model = load_reference(args.preset, args.checkpoint)

        def forward() -> torch.Tensor:
            return model(pixels[:, None]).depth[0, 0]

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        with torch.inference_mode():
            if command == "run":
                started, cpu_started = time.perf_counter(), time.process_time()
                forward()
                wall_ms = (time.perf_counter() - started) * 1e3
                cpu_ms = (time.process_time() - cpu_started) * 1e3
                print(json.dumps({"ms": wall_ms, "cpu_ms": cpu_ms}), flush=True)
            elif command == "depth":
                np.save(rest[0], forward().numpy())
                print(json.dumps({"ok": True}), flush=True)
            else:
                return


class Worker:
    """A worker subprocess spoken to line by line."""

    def __init__(self, name: str, checkpoint: Path, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--checkpoint",
            str(checkpoint),
            "--preset",
            args.preset,
            "--threads",
            str(args.threads),
            "--size",
            *map(str, args.size),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.ask(None)  # wait until loaded

    def ask(self, command: str | None) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command + "\n")
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"worker exited with {self.process.wait()}")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="da3-small")
    parser.add_argument("--size", type=int, nargs=2, default=(504, 504), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np
    import torch

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    cpu_times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp)
        params = write_checkpoint(args.preset, checkpoint)
        workers = {name: Worker(name, checkpoint, args) for name in IMPLEMENTATIONS}
        try:
            for round_index in range(args.warmup + args.runs):
                order = IMPLEMENTATIONS if round_index % 2 == 0 else IMPLEMENTATIONS[::-1]
                for name in order:
                    answer = workers[name].ask("run")
                    if round_index >= args.warmup:
                        times[name].append(answer["ms"])
                        cpu_times[name].append(answer["cpu_ms"])
            depths = {}
            for name, w in workers.items():
                w.ask(f"depth {checkpoint / name}.npy")
                depths[name] = np.load(checkpoint / f"{name}.npy")
        finally:
            for w in workers.values():
                w.close()

    scale = float(np.abs(depths["reference"]).max())
    depth_rel_diff = float(np.abs(depths["ours"] - depths["reference"]).max()) / scale
    summary = {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "median_cpu_ms": statistics.median(cpu_times[name]),
            "times_ms": t,
            "cpu_times_ms": cpu_times[name],
        }
        for name, t in times.items()
    }
    ratio = summary["ours"]["median_ms"] / summary["reference"]["median_ms"]
    cpu_ratio = summary["ours"]["median_cpu_ms"] / summary["reference"]["median_cpu_ms"]
    height, width = args.size
    print(
        f"\n{args.preset} ({params / 1e6:.1f} M params), 1x3x{height}x{width} fp32, "
        f"torch {torch.__version__}, {args.threads} threads, "
        f"{args.runs} runs after {args.warmup} warm-up, interleaved"
    )
    print(f"{'implementation':<16}{'median ms':>11}{'min ms':>10}{'median CPU ms':>15}")
    for name, row in summary.items():
        print(
            f"{name:<16}{row['median_ms']:>11.1f}{row['min_ms']:>10.1f}"
            f"{row['median_cpu_ms']:>15.1f}"
        )
    print(f"ratio ours / reference (medians): wall {ratio:.3f}, CPU time {cpu_ratio:.3f}")
    print(f"depth max |ours - reference| / max |reference|: {depth_rel_diff:.2e}")
    print(f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    result = {
        "preset": args.preset,
        "params": params,
        "input": [1, 3, height, width],
        "dtype": "float32",
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        **summary,
        "ratio_ours_over_reference": ratio,
        "cpu_ratio_ours_over_reference": cpu_ratio,
        "depth_max_rel_diff": depth_rel_diff,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "date": datetime.now(UTC).isoformat(),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
