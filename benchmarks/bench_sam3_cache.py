"""SAM3: the same image again with a new prompt, with the embedding cache, against the first time.

Full-size SAM3 architecture (``Sam3Config()`` defaults are the released model's) with random
weights, run through ``Sam3Pipeline`` as the server runs it (prepare → forward → postprocess),
with the embedding cache at the server's default budget for the device. The first request (one
photo, one prompt) runs the vision encoder; then the same photo, decoded again from its bytes,
with a new prompt each time (found by the hash of its pixels), and by its ``image_id`` (what
``POST /inference/sam3/embed`` answers) with a new prompt each time. Every core call is counted
per graph, so the output shows the vision encoder running only the first time.

    python benchmarks/bench_sam3_cache.py [--repeats 3] [--threads N] [--dtype float32]
                                          [--device cuda] [--json out.json]

Takes ~2 minutes and ~5 GB of RAM on 2 CPU cores (the vision encoder alone is ~40 s). On CUDA
an untimed pass on another image runs first, so lazy kernel set-up is not counted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ASSETS = ROOT / "tests" / "assets"
PROMPTS = ["cat", "person", "rocket", "cup", "flag", "tree", "car", "dog"]


class GraphTimer:
    """Wraps ``core.run``: seconds and calls per graph."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def __call__(self, graph: str, inputs: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self.run(graph, inputs, **kwargs)
        self.seconds[graph] += time.perf_counter() - started
        self.calls[graph] += 1
        return out


def build_pipeline(threads: int, device: str, dtype: str) -> tuple[Any, int]:
    """Full-size ``Sam3Model`` with random weights in a cached ``Sam3Pipeline``."""
    import torch
    from transformers import Sam3Config, Sam3Model

    from engines.attention import use_blocked_attention
    from engines.base import LoadRequest, VariantSpec
    from engines.families.sam3.family import cache_budget_bytes
    from engines.families.sam3.graphs import torch_graphs
    from engines.families.sam3.pipeline import Preprocessing, PromptTokenizer, Sam3Pipeline
    from engines.families.sam3.tiny import tiny_tokenizer
    from engines.torch_runtime import DTYPES, TorchCore, set_torch_threads

    set_torch_threads(threads)
    torch.manual_seed(0)
    config = Sam3Config()
    with torch.device(device):  # initialise the weights where they will run
        model = Sam3Model(config).to(DTYPES[dtype]).eval()
    use_blocked_attention(model)  # as the family's load_torch does (bf16 on CPU)
    params = sum(p.numel() for p in model.parameters())
    levels = len(config.vision_config.scale_factors) - 1
    core = TorchCore(model, torch_graphs(model, levels), device, dtype)
    # The released tokenizer is gated; a small CLIP vocabulary gives these prompts the same
    # shape (padded to the text encoder's 32 positions), which is all timing needs.
    tokenizer = PromptTokenizer(tiny_tokenizer(), config.text_config.max_position_embeddings)
    # The budget the server gives it on this device (the sam3_cache_mb setting left unset).
    request = LoadRequest(
        VariantSpec("sam3", "random"), device, dtype, threads, image_cache_mb=None
    )
    pipeline = Sam3Pipeline(
        core,
        Preprocessing.from_config({}),
        tokenizer,
        levels=levels,
        variant="sam3",
        cache_budget_bytes=cache_budget_bytes(request),
    )
    return pipeline, params


def run_once(pipeline: Any, image: Any, prompt: str) -> dict[str, Any]:
    """One request as the pool runs it; seconds per step and graph, calls per graph."""
    from engines.families.sam3.options import Sam3Options

    timer = GraphTimer(pipeline.core.run)
    pipeline.core.run = timer
    options = Sam3Options(prompts=[prompt], output_format="rle")
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
        "prompt": prompt,
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
    parser.add_argument("--repeats", type=int, default=3, help="warm requests of each kind")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--image", default=str(ASSETS / "astronaut.png"))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if 2 * args.repeats + 1 > len(PROMPTS):
        parser.error(f"--repeats at most {(len(PROMPTS) - 1) // 2} (one new prompt each)")

    from engines.base import ImageHandle
    from engines.families.sam3.embeddings import image_id

    threads = args.threads or os.cpu_count() or 1
    started = time.perf_counter()
    pipeline, params = build_pipeline(threads, args.device, args.dtype)
    build_s = time.perf_counter() - started
    data = Path(args.image).read_bytes()

    def decoded() -> Image.Image:  # what the server holds after decoding the request's bytes
        return Image.open(io.BytesIO(data)).convert("RGB")

    if args.device != "cpu":  # lazy CUDA set-up, on another image so the cache stays cold
        run_once(pipeline, Image.new("RGB", (640, 480), (90, 120, 30)), "warm-up")
    prompts = iter(PROMPTS)
    first = run_once(pipeline, decoded(), next(prompts))
    by_hash = [run_once(pipeline, decoded(), next(prompts)) for _ in range(args.repeats)]
    handle = ImageHandle(image_id(decoded(), pipeline.variant))
    by_id = [run_once(pipeline, handle, next(prompts)) for _ in range(args.repeats)]
    stats = pipeline.cache_stats()

    def median_s(runs: list[dict[str, Any]]) -> float:
        return statistics.median(r["total_s"] for r in runs)

    figures = {
        "model": "Sam3Config() defaults, random weights",
        "params": params,
        "threads": threads,
        "device": args.device,
        "dtype": args.dtype,
        "image": Path(args.image).name,
        "input": list(pipeline.preprocessing.size),
        "build_s": build_s,
        "first": first,
        "by_hash": by_hash,
        "by_image_id": by_id,
        "first_s": first["total_s"],
        "by_hash_median_s": median_s(by_hash),
        "by_image_id_median_s": median_s(by_id),
        "ratio_by_hash": first["total_s"] / median_s(by_hash),
        "ratio_by_image_id": first["total_s"] / median_s(by_id),
        "vision_calls": {
            "first": first["graph_calls"].get("vision", 0),
            "by_hash": sum(r["graph_calls"].get("vision", 0) for r in by_hash),
            "by_image_id": sum(r["graph_calls"].get("vision", 0) for r in by_id),
        },
        "cache": msgspec.structs.asdict(stats),
        "embedding_mib": stats.bytes / max(stats.entries, 1) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }

    print(
        f"SAM3 full size ({params / 1e6:.0f} M params, random), {args.device} {args.dtype}, "
        f"{threads} threads, {figures['input'][0]}x{figures['input'][1]} input, "
        f"{figures['image']}; median of {args.repeats} for the repeats"
    )
    print(
        f"{'request':<28} {'total s':>8} {'vision s':>9} {'text s':>7} {'decoder s':>10} "
        f"{'vision calls':>13} {'vs first':>9}"
    )
    rows = [("first (1 image, 1 prompt)", [first]), ("same image, new prompt", by_hash)]
    rows.append(("by image_id, new prompt", by_id))
    for label, runs in rows:
        graph = {
            g: statistics.median(r["graph_s"].get(g, 0.0) for r in runs)
            for g in ("vision", "text", "decoder")
        }
        total = median_s(runs)
        print(
            f"{label:<28} {total:>8.2f} {graph['vision']:>9.2f} {graph['text']:>7.2f} "
            f"{graph['decoder']:>10.2f} {sum(r['graph_calls'].get('vision', 0) for r in runs):>13} "
            f"{first['total_s'] / total:>8.1f}x"
        )
    print(
        f"cache: {stats.entries} embedding(s), {figures['embedding_mib']:.0f} MiB each, budget "
        f"{stats.budget_bytes / 2**20:.0f} MiB; {stats.hits} hits, {stats.misses} misses"
    )
    print(f"peak RSS {figures['peak_rss_mb']:.0f} MB; model built in {build_s:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
