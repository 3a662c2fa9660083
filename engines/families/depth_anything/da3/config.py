"""Depth Anything 3 architecture description: one frozen dataclass and the official presets.

An official checkpoint's ``config.json`` names a preset only (``{"model_name": "da3-small"}``);
a tiny or custom checkpoint spells every architecture field out next to ``model_name``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

HeadKind = Literal["dualdpt", "dpt"]
FfnKind = Literal["mlp", "swiglu"]


@dataclass(frozen=True)
class Da3Config:
    """Everything needed to build a DA3 network whose state dict matches a checkpoint.

    Attributes:
        model_name: Preset or custom name, written back into ``config.json``.
        embed_dim: Width of the DINOv2 backbone.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        out_layers: The four block indices whose outputs feed the head.
        head_kind: ``dualdpt`` (any-view: depth + confidence + an unused ray branch) or ``dpt``
            (mono / metric: depth + sky).
        head_features: Width of the DPT fusion path.
        head_out_channels: Widths of the four DPT projections.
        alt_start: First block of the local/global alternation and of the camera token (-1: off).
        qknorm_start: First block with LayerNorm on queries and keys (-1: off).
        rope_start: First block with 2D rotary position embedding (-1: off).
        cat_token: Head features are concat(last local output, current output).
        ffn_kind: ``mlp`` (GELU MLP) or ``swiglu`` (giant).
        mlp_ratio: Hidden width of the feed-forward layer relative to ``embed_dim``.
        patch_size: Patch side in pixels.
        pos_embed_size: Image side the learned position embedding was trained for.
        rope_frequency: Base frequency of the 2D RoPE.
        has_camera: The checkpoint has a camera encoder and decoder (any-view models).
        camera_encoder_depth: Blocks in the (unused) camera encoder trunk.
        camera_encoder_heads: Attention heads in the camera encoder trunk.
        aux_levels: Levels of the DualDPT ray branch (kept so its weights load).
        aux_out1_convs: Convolutions per ray-branch level (1, 3 or 5).
        sky_head: The DPT head has a sky channel.
        has_gs_head: The checkpoint carries a 3D-Gaussian head; its weights are skipped.
        is_metric: Depth is metric up to the focal length (``metric_depth_m``).

    """

    model_name: str
    embed_dim: int
    depth: int
    num_heads: int
    out_layers: tuple[int, ...]
    head_kind: HeadKind
    head_features: int
    head_out_channels: tuple[int, ...]
    alt_start: int = -1
    qknorm_start: int = -1
    rope_start: int = -1
    cat_token: bool = False
    ffn_kind: FfnKind = "mlp"
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_embed_size: int = 518
    rope_frequency: float = 100.0
    has_camera: bool = False
    camera_encoder_depth: int = 4
    camera_encoder_heads: int = 16
    aux_levels: int = 4
    aux_out1_convs: int = 5
    sky_head: bool = True
    has_gs_head: bool = False
    is_metric: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append("embed_dim must be divisible by num_heads")
        if len(self.out_layers) != 4 or len(self.head_out_channels) != 4:
            problems.append("out_layers and head_out_channels need four entries each")
        if any(not 0 <= i < self.depth for i in self.out_layers):
            problems.append(f"out_layers must lie in [0, {self.depth})")
        if self.rope_start >= 0 and (self.embed_dim // self.num_heads) % 4:
            problems.append("2D RoPE needs a head dimension divisible by 4")
        if self.head_kind not in ("dualdpt", "dpt"):
            problems.append(f"unknown head_kind {self.head_kind!r}")
        if self.ffn_kind not in ("mlp", "swiglu"):
            problems.append(f"unknown ffn_kind {self.ffn_kind!r}")
        if self.has_camera and self.alt_start < 0:
            problems.append("a camera decoder needs the camera token (alt_start >= 0)")
        if self.aux_out1_convs not in (1, 3, 5):
            problems.append("aux_out1_convs must be 1, 3 or 5")
        if problems:
            raise ValueError(f"Invalid Da3Config {self.model_name!r}: " + "; ".join(problems))

    @property
    def head_dim_in(self) -> int:
        """Channels of the token features the head and the camera decoder read."""
        return self.embed_dim * (2 if self.cat_token else 1)

    def to_json_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Da3Config:
        """Read a ``config.json`` dict: a preset name alone, or explicit architecture fields.

        Keys that are not fields (metadata some exporters add) are ignored. With explicit
        fields, every field without a default must be present.

        Raises:
            ValueError: Unknown preset, or explicit fields that are incomplete or invalid.

        """
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        model_name = fields.get("model_name")
        if set(fields) <= {"model_name"}:
            if str(model_name).startswith("da3nested"):
                raise ValueError(
                    f"{model_name} (any-view giant + metric large, aligned) is not supported: "
                    "load DA3-GIANT and DA3METRIC-LARGE as two models instead."
                )
            if model_name not in PRESETS:
                raise ValueError(
                    f"config.json names model {model_name!r}, which is no DA3 preset "
                    f"({', '.join(PRESETS)}) and gives no architecture fields."
                )
            return PRESETS[model_name]
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        if missing := sorted(required - set(fields)):
            raise ValueError(f"config.json lacks architecture fields: {', '.join(missing)}")
        for key in ("out_layers", "head_out_channels"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


def _anyview(
    name: str,
    embed_dim: int,
    depth: int,
    num_heads: int,
    out_layers: tuple[int, ...],
    alt_start: int,
    features: int,
    out_channels: tuple[int, ...],
    **extra: Any,
) -> Da3Config:
    return Da3Config(
        model_name=name,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        out_layers=out_layers,
        head_kind="dualdpt",
        head_features=features,
        head_out_channels=out_channels,
        alt_start=alt_start,
        qknorm_start=alt_start,
        rope_start=alt_start,
        cat_token=True,
        has_camera=True,
        **extra,
    )


def _monocular(name: str, is_metric: bool) -> Da3Config:
    return Da3Config(
        model_name=name,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        out_layers=(4, 11, 17, 23),
        head_kind="dpt",
        head_features=256,
        head_out_channels=(256, 512, 1024, 1024),
        sky_head=True,
        is_metric=is_metric,
    )


# The reference package's configs/*.yaml, spelled out.
PRESETS: dict[str, Da3Config] = {
    "da3-small": _anyview("da3-small", 384, 12, 6, (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)),
    "da3-base": _anyview("da3-base", 768, 12, 12, (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)),
    "da3-large": _anyview(
        "da3-large", 1024, 24, 16, (11, 15, 19, 23), 8, 256, (256, 512, 1024, 1024)
    ),
    "da3-giant": _anyview(
        "da3-giant",
        1536,
        40,
        24,
        (19, 27, 33, 39),
        13,
        256,
        (256, 512, 1024, 1024),
        ffn_kind="swiglu",
        has_gs_head=True,
    ),
    "da3mono-large": _monocular("da3mono-large", is_metric=False),
    "da3metric-large": _monocular("da3metric-large", is_metric=True),
}
