"""SAM3: what each extra prompt costs when the image is encoded once.

Full-size SAM3 architecture (``Sam3Config()`` defaults are the released model's) with random
weights, one photo resized to 1008², run through ``Sam3Pipeline`` (prepare → forward →
postprocess) with 1 prompt and then with 8. Every core call is timed and counted per graph, so
the output shows the vision encoder running once per request whatever the number of prompts,
and the per-prompt increment being the decoder's.

    python benchmarks/bench_sam3_prompts.py [--threads N] [--device cuda --dtype float16]
                                            [--json out.json]

Takes a few minutes and ~5 GB of RAM on 2 CPU cores (the vision encoder alone is ~40 s). On
CUDA a 1-prompt pass runs first, untimed, so lazy kernel set-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
PROMPTS = ["cat", "person", "rocket", "cup", "flag", "tree", "car", "dog"]


@dataclass
class Options:
    prompts: list[str]
    threshold: float = 0.5
    mask_threshold: float = 0.5
    output_format: str = "rle"


@dataclass
class GraphTimer:
    """Wraps ``core.run``: seconds and calls per graph."""

    run: Any
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __call__(self, graph: str, inputs: Any, *, host: bool = True) -> Any:
        started = time.perf_counter()
        out = self.run(graph, inputs, host=host)
        self.seconds[graph] += time.perf_counter() - started
        self.calls[graph] += 1
        return out


def build_pipeline(threads: int, device: str, dtype: str) -> tuple[Any, float, int]:
    import torch
    from transformers import Sam3Config, Sam3Model

    from engines.families.sam3.graphs import torch_graphs
    from engines.families.sam3.pipeline import Preprocessing, PromptTokenizer, Sam3Pipeline
    from engines.families.sam3.tiny import tiny_tokenizer
    from engines.torch_runtime import DTYPES, TorchCore, set_torch_threads

    set_torch_threads(threads)
    started = time.perf_counter()
    torch.manual_seed(0)
    config = Sam3Config()
    with torch.device(device):  # initialise the weights where they will run
        model = Sam3Model(config).to(DTYPES[dtype]).eval()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    levels = len(config.vision_config.scale_factors) - 1
    core = TorchCore(model, torch_graphs(model, levels), device, dtype)
    # The released tokenizer is gated; a small CLIP vocabulary tokenises these prompts the same
    # way in shape (padded to the text encoder's 32 positions), which is all timing needs.
    tokenizer = PromptTokenizer(tiny_tokenizer(), config.text_config.max_position_embeddings)
    pipeline = Sam3Pipeline(core, Preprocessing.from_config({}), tokenizer, levels=levels)
    return pipeline, build_s, params


def run_once(pipeline: Any, image: Image.Image, prompts: list[str]) -> dict[str, Any]:
    timer = GraphTimer(pipeline.core.run)
    pipeline.core.run = timer
    options = Options(prompts)
    try:
        started = time.perf_counter()
        prepared = pipeline.prepare(image, options)
        t_pre = time.perf_counter()
        (raw,) = pipeline.forward([prepared], options)
        t_fwd = time.perf_counter()
        result = pipeline.postprocess(raw, prepared, options)
        t_post = time.perf_counter()
    finally:
        del pipeline.core.run
    return {
        "prompts": len(prompts),
        "total_s": t_post - started,
        "preprocess_s": t_pre - started,
        "forward_s": t_fwd - t_pre,
        "postprocess_s": t_post - t_fwd,
        "graph_s": dict(timer.seconds),
        "graph_calls": dict(timer.calls),
        "instances": len(result["instances"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--image", default=str(ASSETS / "astronaut.png"))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    import os

    threads = args.threads or os.cpu_count() or 1
    pipeline, build_s, params = build_pipeline(threads, args.device, args.dtype)
    image = Image.open(args.image).convert("RGB")
    if args.device != "cpu":
        run_once(pipeline, image, PROMPTS[:1])
    one = run_once(pipeline, image, PROMPTS[:1])
    eight = run_once(pipeline, image, PROMPTS)

    extra = eight["prompts"] - one["prompts"]
    decoder_increment_s = (eight["graph_s"]["decoder"] - one["graph_s"]["decoder"]) / extra
    total_increment_s = (eight["total_s"] - one["total_s"]) / extra
    figures = {
        "model": "Sam3Config() defaults, random weights",
        "params": params,
        "threads": threads,
        "device": args.device,
        "dtype": args.dtype,
        "image": Path(args.image).name,
        "input": list(pipeline.preprocessing.size),
        "build_s": build_s,
        "runs": [one, eight],
        "ratio_8_to_1": eight["total_s"] / one["total_s"],
        "per_prompt_increment_s": total_increment_s,
        "per_prompt_decoder_increment_s": decoder_increment_s,
        "vision_calls": [one["graph_calls"]["vision"], eight["graph_calls"]["vision"]],
        # What 8 prompts would cost if every prompt re-ran the full model.
        "naive_8_prompts_s": 8 * one["total_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }

    print(
        f"SAM3 full size ({params / 1e6:.0f} M params, random), {args.device} {args.dtype}, "
        f"{threads} threads, "
        f"{figures['input'][0]}x{figures['input'][1]} input"
    )
    print(
        f"{'prompts':>7} {'total s':>8} {'vision s':>9} {'text s':>7} {'decoder s':>10} "
        f"{'post s':>7} {'vision calls':>13} {'decoder calls':>14}"
    )
    for run in (one, eight):
        g, c = run["graph_s"], run["graph_calls"]
        print(
            f"{run['prompts']:>7} {run['total_s']:>8.2f} {g['vision']:>9.2f} {g['text']:>7.2f} "
            f"{g['decoder']:>10.2f} {run['postprocess_s']:>7.2f} {c['vision']:>13} "
            f"{c['decoder']:>14}"
        )
    print(
        f"8 prompts / 1 prompt: {figures['ratio_8_to_1']:.2f}x "
        f"(re-running the full model per prompt would be 8x: {figures['naive_8_prompts_s']:.1f} s)"
    )
    print(
        f"per extra prompt: {total_increment_s:.2f} s in all, "
        f"{decoder_increment_s:.2f} s of it in the decoder"
    )
    print(f"peak RSS {figures['peak_rss_mb']:.0f} MB; model built in {build_s:.1f} s")
    if args.device != "cpu":
        import torch

        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"peak GPU memory {figures['peak_gpu_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
