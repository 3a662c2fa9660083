"""Three photos of one scene in, a coloured point cloud and the cameras out (Depth Anything 3).

Usage::

    python examples/depth_scene_to_ply.py [--url URL] [--api-key KEY] [--ply scene.ply]
        [--glb scene.glb] [--variant small] [--max-points N] [IMAGE ...]

Without images it sends three overlapping crops of tests/assets/coffee.png, a window sliding
left to right as if the camera had moved sideways. The server predicts every view's depth and
camera in one forward (``POST /inference/depth-anything/scene``) and returns the point cloud
as a PLY in the cameras' world frame; ``--glb`` also fetches the GLB scene (points and a
frustum per camera). The URL defaults to ``$VISION_API_URL``, else http://127.0.0.1:8000; the
key to ``$VISION_API_KEY``. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vision_client import DepthSceneResponse, ScenePointCloud, VisionClient

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
WINDOW_FRACTION = 0.6  # each crop's share of the photo's width; neighbours overlap by half
VIEWERS = """Open it in a viewer:
  python -c "import trimesh; trimesh.load('{ply}').show()"   (needs pip install "pyglet<2";
    the same with the GLB shows the cameras too)
  MeshLab or CloudCompare: File > Open"""


def sliding_crops(path: Path, views: int = 3) -> list[Image.Image]:
    """``views`` full-height crops of the photo, the window sliding left to right."""
    with Image.open(path) as photo:
        image = photo.convert("RGB")
    width = round(image.width * WINDOW_FRACTION)
    lefts = np.linspace(0, image.width - width, views).round().astype(int)
    return [image.crop((left, 0, left + width, image.height)) for left in lefts]


def describe(scene: DepthSceneResponse) -> None:
    """Print each view's size, camera centre and focal length."""
    print(f"{scene.variant} on {scene.device} ({scene.engine}), {len(scene.views)} views:")
    for index, view in enumerate(scene.views):
        x, y, z = view.camera_centre()
        fx = view.intrinsics_matrix()[0, 0]
        print(
            f"  view {index}: {view.width}x{view.height} px, camera centre "
            f"({x:+.3f}, {y:+.3f}, {z:+.3f}), fx {fx:.1f} px, depth {view.min:.3f}..{view.max:.3f}"
        )


def save(scene: DepthSceneResponse, path: Path) -> ScenePointCloud:
    """Write the scene's point cloud file to ``path``."""
    if scene.point_cloud is None:
        raise RuntimeError("the server sent no point cloud")
    scene.point_cloud.save(path)
    return scene.point_cloud


def run(client: VisionClient, images: list[Path | Image.Image], args: argparse.Namespace) -> None:
    """Ask for the scene as a PLY (and a GLB), write the files, print what came back."""
    options = {"variant": args.variant, "max_points": args.max_points}
    scene = client.depth_scene(images, point_cloud="ply", **options)
    describe(scene)
    ply = save(scene, args.ply)
    print(f"{args.ply}: {ply.points} points (world frame of the cameras above)")
    if args.glb is not None:
        glb = save(client.depth_scene(images, point_cloud="glb", **options), args.glb)
        print(f"{args.glb}: {glb.points} points and {len(scene.views)} camera frusta (glTF axes)")
    print(VIEWERS.format(ply=args.ply))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, reconstruct the scene; 0 when the files were written, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="views (default: crops of a photo)")
    parser.add_argument(
        "--url", default=os.environ.get("VISION_API_URL", "http://127.0.0.1:8000"), help="server"
    )
    parser.add_argument("--api-key", default=os.environ.get("VISION_API_KEY"), help="X-API-Key")
    parser.add_argument("--ply", type=Path, default=Path("scene.ply"), help="PLY to write")
    parser.add_argument("--glb", type=Path, help="also write this GLB (points and cameras)")
    parser.add_argument("--variant", help="an any-view DA3 variant (server default if unset)")
    parser.add_argument("--max-points", type=int, help="most points (server default 1000000)")
    args = parser.parse_args(argv)
    images: list[Path | Image.Image] = [*args.images] or [*sliding_crops(ASSETS / "coffee.png")]
    try:
        with VisionClient(args.url, api_key=args.api_key, timeout_s=600) as client:
            run(client, images, args)
    except Exception as error:  # report any failure as one line and a non-zero exit
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
