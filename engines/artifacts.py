"""ONNX artifacts on disk: the manifest ``vision-api export`` writes and the engine reads.

Layout: ``ARTIFACTS/<model_type>/<variant>/<precision>/manifest.json`` plus one ``.onnx`` file
per graph. The ONNX engine reads only what the manifest says; the pool uses an artifact only
when its weight hash matches the configured checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class TensorInfo(msgspec.Struct, kw_only=True):
    """One input or output of a graph; string dimensions are dynamic axes."""

    name: str
    dtype: str
    shape: list[int | str]


class GraphInfo(msgspec.Struct, kw_only=True):
    """One exported graph."""

    name: str
    file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    optimized: bool = False


class Manifest(msgspec.Struct, kw_only=True):
    """What an artifact directory holds and how it was checked."""

    model_type: str
    variant: str
    source: str
    weights_sha256: str
    precision: str
    graphs: list[GraphInfo]
    opset: int
    exporter: str
    versions: dict[str, str]
    parity: dict[str, float]
    gates: dict[str, str]
    created_at: str
    notes: list[str] = msgspec.field(default_factory=list)

    def graph(self, name: str) -> GraphInfo | None:
        """The graph called ``name``, if exported."""
        return next((g for g in self.graphs if g.name == name), None)


def artifact_dir(root: Path, model_type: str, variant: str, precision: str = "fp32") -> Path:
    """Where the artifact of one variant and precision lives."""
    return root / model_type / variant / precision


def read_manifest(directory: Path) -> Manifest:
    """Load ``directory/manifest.json``."""
    return msgspec.json.decode((directory / MANIFEST).read_bytes(), type=Manifest)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``directory/manifest.json`` (pretty-printed, for people too)."""
    path = directory / MANIFEST
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    return path


def weights_sha256(checkpoint_dir: Path) -> str:
    """A hash identifying a checkpoint's weights.

    Files in a Hugging Face cache snapshot are links to blobs named by their own sha256, which
    is used as it is; other weight files are hashed. The per-file digests are combined in name
    order.
    """
    combined = hashlib.sha256()
    files = sorted(
        p for p in checkpoint_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    )
    for path in files:
        combined.update(path.name.encode())
        combined.update(_file_digest(path).encode())
    return combined.hexdigest()


def _file_digest(path: Path) -> str:
    if path.is_symlink():
        target = Path(os.readlink(path)).name
        if len(target) == 64 and all(c in "0123456789abcdef" for c in target):
            return target
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def find_artifact(
    root: Path | None, model_type: str, variant: str, weights: str | None, precision: str = "fp32"
) -> tuple[Manifest | None, Path, str | None]:
    """The usable artifact for a variant, or why there is none.

    Returns:
        ``(manifest, directory, None)`` when usable, else ``(None, directory, reason)``.
    """
    directory = artifact_dir(root or Path("artifacts"), model_type, variant, precision)
    if not (directory / MANIFEST).exists():
        return None, directory, f"no ONNX artifact in {directory}"
    try:
        manifest = read_manifest(directory)
    except (msgspec.DecodeError, OSError) as exc:
        return None, directory, f"unreadable manifest in {directory}: {exc}"
    if weights is not None and manifest.weights_sha256 != weights:
        return (
            None,
            directory,
            (
                f"the artifact in {directory} was exported from other weights "
                f"({manifest.weights_sha256[:12]} != {weights[:12]}); export it again"
            ),
        )
    missing = [g.file for g in manifest.graphs if not (directory / g.file).exists()]
    if missing:
        return None, directory, f"artifact in {directory} lacks {', '.join(missing)}"
    return manifest, directory, None


def failed_gates(gates: Mapping[str, tuple[str, float]], figures: Mapping[str, float]) -> list[str]:
    """The gates (metric → (">=" or "<=", limit)) that ``figures`` fail, described."""
    return [
        f"{metric} = {figures[metric]:.6g} (gate {op} {limit})"
        for metric, (op, limit) in gates.items()
        if metric in figures
        and not (figures[metric] >= limit if op == ">=" else figures[metric] <= limit)
    ]


def manifest_gates_failed(manifest: Manifest) -> list[str]:
    """The recorded parity figures of ``manifest`` that fail its own recorded gates.

    fp32 artifacts are only written when they pass; derived precisions (int8, fp16) record
    their drift whatever it is, so this tells whether one may stand in for fp32.
    """
    gates = {}
    for metric, gate in manifest.gates.items():
        op, _, limit = gate.partition(" ")
        gates[metric] = (op, float(limit))
    return failed_gates(gates, manifest.parity)


def precision_order(precision: str, device: str) -> tuple[str, ...]:
    """The artifact precisions to try, in order, for a configured ``precision``.

    ``auto`` prefers the faster artifact where its parity held: int8 on CPU (ONNX Runtime's
    integer matrix products), fp16 on CUDA; fp32 otherwise.
    """
    if precision != "auto":
        return (precision,)
    return ("fp16", "fp32") if device.startswith("cuda") else ("int8", "fp32")
