"""``vision-api export``: write ONNX artifacts, or verify existing ones against torch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engines.artifacts import MANIFEST, read_manifest
from engines.base import VariantSpec, family_export
from engines.errors import NotFoundError, VisionError
from engines.pool import ModelPool
from export.parity import ParityError, default_images

# Builds the pool exactly as the server does from a settings file (None: the environment's).
PoolFactory = Callable[[str | None], ModelPool]


def main(argv: Sequence[str] | None, build_pool: PoolFactory) -> int:
    """Entry point of ``vision-api export`` (``service.cli`` passes the server's pool wiring).

    Args:
        argv: The arguments after ``export``.
        build_pool: Builds the model pool from a settings file path (or the environment).
    """
    parser = argparse.ArgumentParser(
        prog="vision-api export",
        description="Export model variants to ONNX (with a manifest and parity figures), or "
        "re-check exported artifacts with --verify.",
    )
    parser.add_argument("model", nargs="?", help="model type (dinov3, sam3, grounding-dino, ...)")
    parser.add_argument("--variant", help="variant (default: the model's default)")
    parser.add_argument("--all", action="store_true", help="every family's default variant")
    parser.add_argument(
        "--out", type=Path, help="artifacts root (default: VISION_API_ARTIFACTS_DIR)"
    )
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--fp16", action="store_true", help="also write an fp16 artifact (GPU)")
    parser.add_argument("--quantize", choices=["int8"], help="also write an int8 CPU artifact")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip the fused attention and ORT's transformer fusions",
    )
    parser.add_argument("--config", help="TOML settings file (the server's)")
    parser.add_argument("--images", type=Path, nargs="*", help="photos for the parity check")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="re-check artifacts under DIR")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args, build_pool)
    except (VisionError, ValueError) as exc:  # a user's mistake: one line, no traceback
        print(f"vision-api export: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, build_pool: PoolFactory) -> int:
    pool = build_pool(str(Path(args.config).resolve()) if args.config else None)
    images = args.images or default_images()
    if args.verify:
        return _verify(pool, args.verify, images)
    if not args.all and not args.model:
        parser.error("name a model type, or use --all or --verify DIR")
    from export.onnx_export import ExportOptions, export_variant

    options = ExportOptions(
        out=args.out or pool.config.artifacts_dir or Path("artifacts"),
        opset=args.opset,
        fp16=args.fp16,
        quantize=args.quantize,
        optimize=not args.no_optimize,
        images=images,
    )
    targets = (
        [(family.name, None) for family in pool.registry if family_export(family) is not None]
        if args.all
        else [(args.model, args.variant)]
    )
    status = 0
    for model_type, variant in targets:
        resolved = pool.resolve(model_type, variant)
        name, spec = resolved.model_type, resolved.spec
        family = pool.registry.get(name)
        try:
            for path in export_variant(family, spec, options, pool.config.hf_token):
                manifest = read_manifest(path.parent)
                print(f"{name}/{spec.name} [{manifest.precision}] → {path.parent}")
                for metric, value in manifest.parity.items():
                    print(f"    {metric}: {value:.6g}  (gate {manifest.gates.get(metric, '-')})")
        except ParityError as exc:
            print(f"{name}/{spec.name}: FAILED: {exc}", file=sys.stderr)
            status = 1
    return status


def _verify(pool: ModelPool, root: Path, images: Sequence[Path]) -> int:
    """Re-run the parity check of every manifest under ``root`` against the configured torch."""
    from engines.artifacts import weights_sha256
    from engines.base import LoadRequest
    from engines.checkpoints import resolve_checkpoint
    from engines.onnx_runtime import OrtCore, OrtOptions
    from export.parity import compare, reference_runs

    manifests = sorted(root.rglob(MANIFEST))
    if not manifests:
        print(f"no {MANIFEST} under {root}", file=sys.stderr)
        return 1
    status = 0
    for path in manifests:
        manifest = read_manifest(path.parent)
        label = f"{manifest.model_type}/{manifest.variant} [{manifest.precision}]"
        family = pool.registry.get(manifest.model_type)
        try:
            spec = pool.resolve(manifest.model_type, manifest.variant).spec
        except NotFoundError:  # not configured here: the manifest says where it came from
            spec = VariantSpec(manifest.variant, manifest.source)
        checkpoint = resolve_checkpoint(spec.source, pool.config.hf_token)
        if weights_sha256(checkpoint) != manifest.weights_sha256:
            print(f"{label}: FAILED: exported from other weights than {spec.source}")
            status = 1
            continue
        request = LoadRequest(spec, "cpu", "float32", os.cpu_count() or 1)
        reference = family.load_torch(request)
        try:
            expected = reference_runs(family, reference, images)
        finally:
            reference.core.close()  # released before the ONNX sessions are built
        core = OrtCore(path.parent, manifest, OrtOptions())
        try:
            parity = compare(
                family,
                expected,
                family.load_onnx(request, core),
                enforce_gates=manifest.precision == "fp32",
            )
            figures = ", ".join(f"{k}={v:.6g}" for k, v in parity.items())
            print(f"{label}: ok ({figures})")
        except ParityError as exc:
            print(f"{label}: FAILED: {exc}")
            status = 1
        finally:
            core.close()
    return status
