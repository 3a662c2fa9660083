"""Full-size checkpoints with random weights, in the released layouts, for the benchmarks.

No weights can be downloaded here, so every benchmark builds the real architectures from their
configs and saves them as the hub checkpoints are laid out: the compute is the real one, the
outputs are noise. One writer per checkpoint (:data:`CHECKPOINTS`); ``--out DIR`` also gets a
``config.toml`` in the format ``vision-api tiny-models`` writes, so that

    python benchmarks/checkpoints.py --out /tmp/vision-bench-checkpoints
    vision-api serve --config /tmp/vision-bench-checkpoints/config.toml

serves them. The config lists every checkpoint present under ``DIR`` (written now or by an
earlier run); existing ones are kept unless ``--force``. Checkpoints are large (SAM3 3.4 GB,
GroundingDINO 0.7 GB): write them outside the repository (``/tmp`` by default).

    python benchmarks/checkpoints.py --families dinov3 depth-anything-v2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = Path("/tmp/vision-bench-checkpoints")
CONFIG = "config.toml"
LICENSE = "random weights (benchmark checkpoint)"


def dinov3_vits16(directory: Path) -> str:
    """DINOv3 ViT-S/16 (21.6 M params) with the released preprocessor config."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from engines.families.dinov3.pipeline import DEFAULT_PREPROCESSING

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=16,
        num_register_tokens=4,
        use_gated_mlp=False,
    )
    model = DINOv3ViTModel(config)
    # Random init leaves the CLS/register tokens near zero, so the final LayerNorm of a
    # near-constant vector amplifies float32 rounding (torch then drifts 1e-3 from float64).
    # Unit-variance tokens keep the comparison meaningful; the compute is unchanged.
    with torch.no_grad():
        for name, param in model.embeddings.named_parameters():
            if "token" in name:
                param.normal_()
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DEFAULT_PREPROCESSING))
    return "dinov3"


def sam3_full(directory: Path) -> str:
    """SAM3 at ``Sam3Config()`` defaults (~0.84 B params, 1008² input, 200 queries).

    The tokenizer is the tiny checkpoint's (a CLIP BPE over a few words: its ids fit the
    49408-token vocabulary), and the text config's special ids are set to its own.
    """
    import torch
    from transformers import Sam3Config, Sam3Model

    from engines.families.sam3.pipeline import DEFAULT_PREPROCESSING
    from engines.families.sam3.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = Sam3Config()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_config: Any = config.text_config
    text_config.bos_token_id = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    text_config.eos_token_id = eos
    text_config.pad_token_id = eos
    torch.manual_seed(0)
    Sam3Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DEFAULT_PREPROCESSING))
    return "sam3"


def grounding_dino_tiny(directory: Path) -> str:
    """GroundingDINO at ``GroundingDinoConfig()`` defaults: Swin-T + BERT-base (as
    ``IDEA-Research/grounding-dino-tiny``, 172 M params), 900 queries, 800-1333 input.

    The tokenizer is the tiny checkpoint's BERT vocabulary (its ids, 101/102/1012/1029 for the
    special tokens included, fit BERT-base's 30522).
    """
    import torch
    from transformers import BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection

    from engines.families.grounding_dino.images import DEFAULT_PREPROCESSING
    from engines.families.grounding_dino.tiny import tiny_vocab

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig())
    # Random init gives text logits of ±50 whose sigmoids are all 0 or 1 (every query a
    # detection); as in the tiny checkpoint, a smaller final decoder norm spreads them over
    # (0, 1) so thresholds and scores mean something. The compute is unchanged.
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(0.1)
        model.model.decoder.layer_norm.bias.mul_(0.1)
    model.save_pretrained(directory)
    BertTokenizer(vocab=tiny_vocab()).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DEFAULT_PREPROCESSING))
    return "grounding-dino"


def depth_anything_da3_small(directory: Path) -> str:
    """Depth Anything 3 at the ``da3-small`` preset, as ``depth-anything/DA3-SMALL``.

    DINOv2 ViT-S with the camera token, DualDPT head and camera decoder, in the official
    layout (``{"model_name": "da3-small"}``), with the tiny checkpoints' well-scaled random
    weights (34 M parameters).
    """
    from engines.families.depth_anything.da3 import PRESETS, Da3Network, save_da3
    from engines.families.depth_anything.da3.tiny import randomize

    network = Da3Network(PRESETS["da3-small"])
    randomize(network, 0)
    save_da3(network, directory, preset_only=True)
    return "depth-anything"


def depth_anything_v2_small(directory: Path) -> str:
    """Depth Anything V2 Small as ``depth-anything/Depth-Anything-V2-Small-hf`` (24.8 M params).

    transformers ``DepthAnythingForDepthEstimation`` with the released V2-Small config (a
    DINOv2 ViT-S/14 taking stages 3/6/9/12, which differ from transformers' default V1 config),
    the released ``preprocessor_config.json``, and the tiny V2 checkpoint's fan-in scaled
    random weights (the default init gives disparities near 1e-7 and many subnormal
    intermediates, which would time a slower CPU path than real weights take).
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    from engines.families.depth_anything.tiny import _randomize_v2
    from engines.families.depth_anything.v2 import PREPROCESSOR_FILE, RELEASED_PREPROCESSING

    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        out_indices=[3, 6, 9, 12],  # type: ignore[call-arg]  # set through the backbone mixin
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=384,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_in_index=-1,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    _randomize_v2(model, 0)
    model.save_pretrained(directory)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(RELEASED_PREPROCESSING, indent=2))
    return "depth-anything"


@dataclass(frozen=True)
class Checkpoint:
    """One benchmark checkpoint: the server's model type and variant it stands in for.

    Attributes:
        model_type: The family (``POST /inference/<model_type>``).
        variant: The built-in variant name whose released checkpoint this imitates; the
            config makes it serve from the local directory.
        subdir: Its directory under the output directory.
        write: Writes it into a directory.
    """

    model_type: str
    variant: str
    subdir: str
    write: Callable[[Path], str]


# name (--families) → checkpoint, in the order the config lists them
CHECKPOINTS: dict[str, Checkpoint] = {
    "dinov3": Checkpoint("dinov3", "vits16", "dinov3-vits16", dinov3_vits16),
    "depth-anything-v2": Checkpoint(
        "depth-anything", "v2-small", "depth-anything-v2-small", depth_anything_v2_small
    ),
    "depth-anything": Checkpoint(
        "depth-anything", "small", "depth-anything-da3-small", depth_anything_da3_small
    ),
    "grounding-dino": Checkpoint(
        "grounding-dino", "tiny", "grounding-dino-tiny", grounding_dino_tiny
    ),
    "sam3": Checkpoint("sam3", "sam3", "sam3", sam3_full),
}
# Left out unless named: minutes to write, 3.4 GB on disk.
HEAVY = ("sam3",)


def is_written(directory: Path) -> bool:
    """Whether a complete checkpoint is in ``directory`` (config and weights)."""
    return (directory / "config.json").exists() and any(directory.glob("*.safetensors"))


def ensure(out: Path, name: str, force: bool = False) -> Path:
    """The directory of checkpoint ``name`` under ``out``, written first if absent."""
    checkpoint = CHECKPOINTS[name]
    directory = out / checkpoint.subdir
    if force or not is_written(directory):
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        checkpoint.write(directory)
        print(f"wrote {name} in {time.perf_counter() - started:.0f} s → {directory}", flush=True)
    return directory


def write_config(out: Path) -> Path:
    """Write ``out/config.toml`` serving every checkpoint present under ``out``.

    The format is ``vision-api tiny-models``'s: per model type a ``default_variant`` (the
    first present in :data:`CHECKPOINTS` order) and one ``source`` per variant.
    """
    out = out.resolve()
    by_type: dict[str, list[Checkpoint]] = {}
    for checkpoint in CHECKPOINTS.values():
        if is_written(out / checkpoint.subdir):
            by_type.setdefault(checkpoint.model_type, []).append(checkpoint)
    lines = ["# Full-size random-weight checkpoints from benchmarks/checkpoints.py.", ""]
    for model_type, checkpoints in by_type.items():
        lines.append(f"[models.{model_type}]")
        lines.append(f'default_variant = "{checkpoints[0].variant}"')
        for checkpoint in checkpoints:
            lines.append(f'[models.{model_type}.variants."{checkpoint.variant}"]')
            lines.append(f'source = "{(out / checkpoint.subdir).as_posix()}"')
            lines.append(f'license = "{LICENSE}"')
        lines.append("")
    path = out / CONFIG
    path.write_text("\n".join(lines))
    return path


def prepare(out: Path, names: list[str], force: bool = False) -> Path:
    """Write the named checkpoints under ``out`` (unless present) and the config; its path."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        ensure(out, name, force)
    return write_config(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--families",
        nargs="*",
        choices=list(CHECKPOINTS),
        default=[n for n in CHECKPOINTS if n not in HEAVY],
        help=f"checkpoints to write (default: all but {', '.join(HEAVY)})",
    )
    parser.add_argument("--force", action="store_true", help="rewrite existing checkpoints")
    args = parser.parse_args()
    if args.out.resolve().is_relative_to(ROOT):
        parser.error(f"write checkpoints outside the repository, not under {ROOT}")
    config = prepare(args.out, args.families, args.force)
    print(f"serve them with: vision-api serve --config {config}")


if __name__ == "__main__":
    main()
