"""Call every endpoint of a running Vision Models API with ``vision_client``; print a summary.

Usage::

    python examples/api_client_example.py [--url URL] [--api-key KEY] [IMAGE ...]

The URL defaults to ``$VISION_API_URL``, else http://127.0.0.1:8000; the images default to the
photos in tests/assets. Exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from vision_client import VisionAPIError, VisionClient
from vision_client.client import job_response

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
DEFAULT_IMAGES = [ASSETS / "chelsea.jpg", ASSETS / "astronaut.jpg"]


def run(client: VisionClient, images: list[Path]) -> None:
    """Call each endpoint once and print one line about its answer."""
    health = client.health()
    print(f"health: {health['status']}, {len(health['models_loaded'])} model(s) loaded")
    statuses = client.models_status()
    print(
        f"models/status: {len(statuses)} variants of {len({s.model_type for s in statuses})} types"
    )

    for fmt in ("dense", "rle", "polygon", "png"):
        result = client.sam3(images, ["cat", "person"], output_format=fmt).results[0]
        masks = result.masks()
        print(f"sam3 [{fmt}]: {len(result.instances)} instances, masks {masks.shape}")
    embedded = client.sam3_embed(images[0])
    by_id = client.sam3([{"image_id": embedded.image_ids[0]}], ["cat"])
    print(
        f"sam3/embed: id {embedded.image_ids[0][:12]}..., kept {embedded.expires_in_s:.0f} s; "
        f"by id: {len(by_id.results[0].instances)} instances"
    )

    detections = client.grounding_dino(images, ["a cat", "a person"]).results
    print(f"grounding-dino: {[len(r.detections) for r in detections]} detections per image")

    for fmt in ("array", "png"):
        depth = client.depth(images[0], output_format=fmt).results[0]
        array = depth.array()
        print(
            f"depth-anything [{fmt}]: {depth.kind} {array.shape}, "
            f"range {float(array.min()):.3f}..{float(array.max()):.3f}"
        )

    features = client.dinov3(images, return_patch_features=True).results
    embedding = features[0].embedding_array()
    norm = float(np.linalg.norm(embedding)) if embedding is not None else 0.0
    grid = features[0].patch_features.grid if features[0].patch_features else None
    print(f"dinov3: dim {features[0].dim}, |embedding| {norm:.3f}, patch grid {grid}")

    loaded = client.load_model("dinov3")
    unloaded = client.unload_model("dinov3", loaded.variant)
    print(
        f"models/load + unload: {loaded.variant} on {loaded.device}, "
        f"unloaded {len(unloaded.unloaded)}"
    )

    job = client.submit_job("grounding-dino", images=[images[0]], prompts=["a cat"])
    info = job.wait(timeout_s=300)
    if info.status != "completed":
        raise RuntimeError(f"job {job.job_id} {info.status}: {info.error}")
    answer = job_response(info)
    listed = client.list_jobs(limit=10)
    client.delete_job(job.job_id)
    print(f"jobs: {job.job_id} {info.status} ({answer.model_type}); {listed.total} listed; deleted")

    try:
        client.sam3(images[0], ["cat"], variant="no-such-variant")
    except VisionAPIError as error:
        print(f"errors: {error.status} {error.detail[:60]!r}")
    else:
        raise RuntimeError("an unknown variant was accepted")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every endpoint; 0 when all answered, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: tests/assets)")
    parser.add_argument(
        "--url", default=os.environ.get("VISION_API_URL", "http://127.0.0.1:8000"), help="server"
    )
    parser.add_argument("--api-key", default=os.environ.get("VISION_API_KEY"), help="X-API-Key")
    args = parser.parse_args(argv)
    try:
        with VisionClient(args.url, api_key=args.api_key) as client:
            run(client, args.images or DEFAULT_IMAGES)
    except Exception as error:  # report any failure as one line and a non-zero exit
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print("OK: every endpoint answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
