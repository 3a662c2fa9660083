"""The torch CUDA path on a GPU: latency by dtype and batch, and half-precision drift.

Full-size architectures with random weights, through each family's real pipeline (the same
``prepare`` / ``forward`` the server runs), on ``cuda:0``. For every family: median forward
time at float32 / float16 / bfloat16 and several batch sizes, and the drift of the half
precisions against float32 on the same inputs (what ``dtype: auto`` = float16 on CUDA costs).

    python benchmarks/gpu_torch_cuda.py --json gpu.json [--families dinov3 sam3 ...]

Writes the JSON after every family, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = [
    ROOT / "tests" / "assets" / n
    for n in ("chelsea.jpg", "astronaut.png", "coffee.png", "rocket.jpg")
]


def timed(fn: Callable[[], Any], repeats: int, device: str = "cuda", warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms; a CUDA device is synchronised around each call."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _flat(results: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.concatenate([np.asarray(r[key], np.float64).ravel() for r in results])


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bench_family(
    name: str,
    checkpoint: Path,
    options: Any,
    batches: list[int],
    compare: Callable[[list[dict], list[dict]], dict[str, float]],
    repeats: int,
) -> dict[str, Any]:
    """Latency per dtype and batch through the family pipeline, and half-precision drift."""
    import torch
    from PIL import Image

    from engines.base import LoadRequest, VariantSpec, run_pipeline
    from engines.registry import default_registry

    family = default_registry().get(name)
    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    out: dict[str, Any] = {"latency_ms": {}, "drift_vs_fp32": {}}
    reference = None
    for dtype in ("float32", "float16", "bfloat16"):
        request = LoadRequest(VariantSpec("bench", str(checkpoint)), "cuda:0", dtype, 16)
        pipeline = family.load_torch(request)
        results = run_pipeline(pipeline, images, options, max_batch_size=4)
        if reference is None:
            reference = results
        else:
            out["drift_vs_fp32"][dtype] = compare(reference, results)
        for batch in batches:
            prepared = [pipeline.prepare(images[i % len(images)], options) for i in range(batch)]
            ms = timed(lambda p=pipeline, b=prepared: p.forward(b, options), repeats)
            out["latency_ms"][f"{dtype}/b{batch}"] = round(ms, 2)
            out["latency_ms"][f"{dtype}/b{batch}/per_image"] = round(ms / batch, 2)
        pipeline.core.close()
        del pipeline
        torch.cuda.empty_cache()
    return out


def dinov3_case(tmp: Path) -> tuple[Path, Any, Callable]:
    from benchmarks.checkpoints import dinov3_vits16
    from engines.families.dinov3.options import Dinov3Options

    ckpt = tmp / "dinov3"
    ckpt.mkdir()
    dinov3_vits16(ckpt)

    def compare(ref: list[dict], got: list[dict]) -> dict[str, float]:
        cos = [
            float(
                np.dot(a["embedding"], b["embedding"])
                / np.linalg.norm(a["embedding"])
                / np.linalg.norm(b["embedding"])
            )
            for a, b in zip(ref, got, strict=True)
        ]
        return {"embedding_cosine_min": min(cos)}

    return ckpt, Dinov3Options(pooling="cls"), compare


def _with_tiny_tokenizer(model: Any, tiny: Path, target: Path) -> Path:
    model.save_pretrained(target)
    for f in tiny.iterdir():
        if f.name != "config.json" and f.suffix in (".json", ".txt") and "model" not in f.name:
            shutil.copy(f, target / f.name)
    return target


def sam3_case(tmp: Path, tiny: Path, threshold: float = 0.0) -> tuple[Path, Any, Callable]:
    import torch
    from transformers import Sam3Config, Sam3Model

    from engines.families.sam3.options import Sam3Options

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Sam3Model(Sam3Config())
    ckpt = _with_tiny_tokenizer(model.cpu(), tiny / "sam3-tiny", tmp / "sam3")
    del model
    # the tiny preprocessor config says 112 px; the real one 1008
    cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
    for key in ("size", "crop_size"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = {k: 1008 for k in cfg[key]}
    (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    options = Sam3Options(
        prompts=["a cat", "a person", "a cup", "a rocket"], threshold=threshold, output_format="rle"
    )

    def compare(ref: list[dict], got: list[dict]) -> dict[str, float]:
        a = np.asarray([i["score"] for r in ref for i in r["instances"]][:50])
        b = np.asarray([i["score"] for r in got for i in r["instances"]][:50])
        n = min(len(a), len(b))
        return {
            "top_scores_max_abs_diff": float(np.abs(a[:n] - b[:n]).max(initial=0.0)),
            "instances_fp32": float(len(a)),
            "instances_half": float(len(b)),
        }

    return ckpt, options, compare


def grounding_dino_case(tmp: Path, tiny: Path) -> tuple[Path, Any, Callable]:
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    from engines.families.grounding_dino.options import GroundingDinoOptions

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig())
    source = next(p for p in tiny.iterdir() if p.name.startswith("grounding"))
    ckpt = _with_tiny_tokenizer(model, source, tmp / "gdino")
    cfg_path = ckpt / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["size"] = {"shortest_edge": 800, "longest_edge": 1333}
    cfg_path.write_text(json.dumps(cfg))
    options = GroundingDinoOptions(
        prompts=["a cat", "a person", "a cup"], box_threshold=0.0, text_threshold=0.0
    )

    def compare(ref: list[dict], got: list[dict]) -> dict[str, float]:
        a = np.asarray([d["score"] for r in ref for d in r["detections"]][:50])
        b = np.asarray([d["score"] for r in got for d in r["detections"]][:50])
        n = min(len(a), len(b))
        return {"top_scores_max_abs_diff": float(np.abs(a[:n] - b[:n]).max(initial=0.0))}

    return ckpt, options, compare


def da3_network(repeats: int) -> dict[str, Any]:
    """DA3-small network alone (its serving pipeline lands separately), 504 px."""
    import torch

    from engines.families.depth_anything.da3.config import PRESETS
    from engines.families.depth_anything.da3.network import Da3Network

    torch.manual_seed(0)
    net = Da3Network(PRESETS["da3-small"]).cuda().eval()
    out: dict[str, Any] = {"latency_ms": {}, "drift_vs_fp32": {}}
    x = torch.randn(8, 3, 504, 504, device="cuda")
    with torch.inference_mode():
        ref = net(x[:2]).depth.float()
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            model = net.to(dtype)
            for batch in (1, 8):
                xb = x[:batch].to(dtype)
                ms = timed(lambda m=model, b=xb: m(b), repeats)
                out["latency_ms"][f"{str(dtype)[6:]}/b{batch}"] = round(ms, 2)
                out["latency_ms"][f"{str(dtype)[6:]}/b{batch}/per_image"] = round(ms / batch, 2)
            if dtype != torch.float32:
                got = model(x[:2].to(dtype)).depth.float()
                out["drift_vs_fp32"][str(dtype)[6:]] = {
                    "depth_rel_l2": float((got - ref).norm() / ref.norm())
                }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--families", nargs="*", default=["dinov3", "da3", "grounding-dino", "sam3"]
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--sam3-threshold",
        type=float,
        default=0.0,
        help="instance threshold (0 keeps all 200 queries of every prompt)",
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from engines.tiny import write_tiny_models

    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny = tmp / "tiny"
        write_tiny_models(tiny)
        for name in args.families:
            started = time.perf_counter()
            try:
                if name == "da3":
                    result = da3_network(args.repeats)
                else:
                    case = {
                        "dinov3": lambda: dinov3_case(tmp),
                        "sam3": lambda: sam3_case(tmp, tiny, args.sam3_threshold),
                        "grounding-dino": lambda: grounding_dino_case(tmp, tiny),
                    }[name]
                    ckpt, options, compare = case()
                    batches = {"dinov3": [1, 8, 32], "sam3": [1, 4]}.get(name, [1, 4])
                    result = bench_family(name, ckpt, options, batches, compare, args.repeats)
            except Exception as exc:
                result = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-1500:],
                }
            result["wall_s"] = round(time.perf_counter() - started, 1)
            report["families"][name] = result
            print(name, json.dumps(result)[:1500], flush=True)
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
