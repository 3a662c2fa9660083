"""DPT heads: four token maps → a full-resolution prediction.

``DptHead`` (mono / metric) predicts depth and sky; ``DualDptHead`` (any-view) predicts depth
and confidence, and also holds the weights of the reference's auxiliary ray branch so that
checkpoints load strictly. That branch is never run: the reference discards its output
whenever a camera decoder exists, which is the case for every any-view checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_HIDDEN = 32  # width of the last 3x3 convolution before each output


Size = int | Tensor  # a spatial size: a plain int, or a traced size under ONNX export


def _size(x: Tensor) -> tuple[Size, Size]:
    """Height and width: plain ints eagerly, traced sizes under export (so they stay dynamic)."""
    return x.shape[-2], x.shape[-1]


def _upsample(x: Tensor, size: tuple[Size, Size]) -> Tensor:
    # torch's stubs take int sizes only; traced sizes (tensors) work as well.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)  # type: ignore[arg-type]


def _centred_grid(steps: Size, half_span: float | Tensor, like: Tensor) -> Tensor:
    """``torch.linspace(-s·(n-1)/n, s·(n-1)/n, n)`` in float32, cast to ``like``'s dtype.

    Written as arithmetic on ``arange`` so that ``n`` may be a traced size.
    """
    index = torch.arange(steps, dtype=torch.float32, device=like.device)  # type: ignore[arg-type]
    return (half_span * (2.0 * index + 1.0 - steps) / steps).to(like.dtype)


def uv_embedding_terms(
    height: Size, width: Size, channels: int, aspect: float | Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """The sinusoidal embedding of a centred UV grid as two broadcastable terms.

    The grid spans ±aspect/diag horizontally and ±1/diag vertically (diag = hypot(aspect, 1)),
    at pixel centres; x and y get ``channels/2`` sin/cos channels each (base 100). The
    reference takes sin/cos at every pixel of a meshgrid; the u half only varies along
    columns and the v half along rows, so the same values are computed once per column and
    per row: ``u`` [channels, 1, width] (zero in the v channels) and ``v`` [channels,
    height, 1] (zero in the u channels). ``u + v`` is the [channels, height, width] embedding,
    exactly (each element is one term plus zero), and ``x + u + v`` equals ``x + (u + v)``.

    Args:
        height: Rows of the feature map.
        width: Columns of the feature map.
        channels: Channels of the feature map (divisible by 4).
        aspect: Width / height of the network input image.
        like: Any tensor on the target device and dtype.

    """
    diag = (aspect**2 + 1.0) ** 0.5
    xs = _centred_grid(width, aspect / diag, like)
    ys = _centred_grid(height, 1.0 / diag, like)
    quarter = channels // 4
    omega = torch.arange(quarter, dtype=torch.float32, device=like.device) / (channels / 4.0)
    omega = 1.0 / 100.0**omega

    def sincos(coords: Tensor) -> Tensor:  # [n] -> [channels/2, n]
        angles = coords[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1).float().transpose(0, 1)

    u, v = sincos(xs), sincos(ys)
    u = torch.cat((u, torch.zeros_like(u[:, :1]).expand_as(u)), dim=0)[:, None, :]
    v = torch.cat((torch.zeros_like(v[:, :1]).expand_as(v), v), dim=0)[:, :, None]
    return u, v


class ResidualConvUnit(nn.Module):
    """relu → conv3x3 → relu → conv3x3, plus the input."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit."""
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """Merge a lateral map into the top-down path, refine, upsample, project (1x1)."""

    def __init__(self, features: int, has_lateral: bool = True) -> None:
        super().__init__()
        # Checkpoint names: resConfUnit1 refines the lateral input, resConfUnit2 the sum.
        self.resConfUnit1 = ResidualConvUnit(features) if has_lateral else None
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, lateral: Tensor | None, size: tuple[int, int]) -> Tensor:
        """Fuse and resize to ``size`` (height, width)."""
        if lateral is not None and self.resConfUnit1 is not None:
            x = x + self.resConfUnit1(lateral)
        return self.out_conv(_upsample(self.resConfUnit2(x), size))


def _output_conv(features_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(features_in, HEAD_HIDDEN, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(HEAD_HIDDEN, channels_out, 1),
    )


def _aux_neck(features: int, convs: int) -> nn.Sequential:
    """Ray-branch neck: 3x3 convolutions alternating between ``features`` and half of it."""
    widths = [features if i % 2 == 0 else features // 2 for i in range(convs + 1)]
    return nn.Sequential(*(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(convs)))


class Scratch(nn.Module):
    """Container named like the checkpoint's ``head.scratch``: lateral convs and fusion."""

    def __init__(
        self, out_channels: Sequence[int], features: int, main_channels: int, sky_head: bool
    ) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, 3, padding=1, bias=False)
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_lateral=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = _output_conv(features // 2, main_channels)
        self.sky_output_conv2 = _output_conv(features // 2, 1) if sky_head else None


class DptHead(nn.Module):
    """Mono / metric DPT head: depth (exp) and an optional sky map (relu)."""

    uses_token_norm = False
    uses_uv_embedding = False

    def __init__(
        self,
        dim_in: int,
        features: int,
        out_channels: Sequence[int],
        *,
        patch_size: int = 14,
        main_channels: int = 1,
        sky_head: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        if self.uses_token_norm:
            self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch(out_channels, features, main_channels, sky_head)

    def _add_uv(self, x: Tensor, aspect: float | Tensor) -> Tensor:
        if not self.uses_uv_embedding:
            return x
        # x + 0.1·embedding as two broadcast additions: no [C, H, W] embedding in memory.
        u, v = uv_embedding_terms(*_size(x), x.shape[1], aspect, x)
        return x + (0.1 * u).to(x.dtype) + (0.1 * v).to(x.dtype)

    def _pyramid(
        self, features: Sequence[Tensor], grid: tuple[Size, Size], aspect: float | Tensor
    ) -> list[Tensor]:
        """Token maps → the four lateral feature maps (strides x4, x2, x1, /2 of the grid)."""
        maps = []
        for stage, tokens in enumerate(features):
            if self.uses_token_norm:
                tokens = self.norm(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)  # type: ignore[arg-type]
            x = self._add_uv(self.projects[stage](x), aspect)
            maps.append(self.resize_layers[stage](x))
        s = self.scratch
        laterals = (s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn)
        return [conv(x) for conv, x in zip(laterals, maps, strict=True)]

    def _decode(self, features: Sequence[Tensor], height: Size, width: Size) -> Tensor:
        """Tokens → the shared full-resolution neck (before the output convolutions)."""
        grid = (height // self.patch_size, width // self.patch_size)
        aspect = width / height
        l1, l2, l3, l4 = self._pyramid(features, grid, aspect)
        s = self.scratch
        out = s.refinenet4(l4, None, _size(l3))
        out = s.refinenet3(out, l3, _size(l2))
        out = s.refinenet2(out, l2, _size(l1))
        out = s.refinenet1(out, l1, (2 * _size(l1)[0], 2 * _size(l1)[1]))
        out = s.output_conv1(out)
        out = _upsample(out, (grid[0] * self.patch_size, grid[1] * self.patch_size))
        return self._add_uv(out, aspect)

    def forward(
        self, features: Sequence[Tensor], height: Size, width: Size
    ) -> tuple[Tensor, Tensor | None]:
        """Predict ``(depth [B, H, W], sky [B, H, W] or None)``.

        Args:
            features: Four patch-token maps [B, P, dim_in] from the backbone.
            height: Network input height (a multiple of the patch size).
            width: Network input width.

        """
        neck = self._decode(features, height, width)
        depth = torch.exp(self.scratch.output_conv2(neck)[:, 0])
        sky_conv = self.scratch.sky_output_conv2
        sky = None if sky_conv is None else F.relu(sky_conv(neck)[:, 0])
        return depth, sky


class DualDptHead(DptHead):
    """Any-view head: depth (exp) and confidence (exp + 1); ray-branch weights kept unused."""

    uses_token_norm = True
    uses_uv_embedding = True

    def __init__(
        self,
        dim_in: int,
        features: int,
        out_channels: Sequence[int],
        *,
        patch_size: int = 14,
        aux_levels: int = 4,
        aux_out1_convs: int = 5,
    ) -> None:
        super().__init__(
            dim_in, features, out_channels, patch_size=patch_size, main_channels=2, sky_head=False
        )
        s = self.scratch
        s.refinenet1_aux = FusionBlock(features)
        s.refinenet2_aux = FusionBlock(features)
        s.refinenet3_aux = FusionBlock(features)
        s.refinenet4_aux = FusionBlock(features, has_lateral=False)
        half = features // 2
        s.output_conv1_aux = nn.ModuleList(
            _aux_neck(features, aux_out1_convs) for _ in range(aux_levels)
        )
        # One LayerNorm shared by every level, as in the reference: the checkpoint stores it
        # once and the other names are aliases (see checkpoint.py).
        shared_norm = nn.LayerNorm(HEAD_HIDDEN)
        s.output_conv2_aux = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(half, HEAD_HIDDEN, 3, padding=1),
                nn.Identity(),  # channels-last permute in the reference
                shared_norm,
                nn.Identity(),  # and back
                nn.ReLU(),
                nn.Conv2d(HEAD_HIDDEN, 7, 1),
            )
            for _ in range(aux_levels)
        )

    def forward(
        self, features: Sequence[Tensor], height: Size, width: Size
    ) -> tuple[Tensor, Tensor | None]:
        """Predict ``(depth [B, H, W], confidence [B, H, W])``; see :meth:`DptHead.forward`."""
        logits = self.scratch.output_conv2(self._decode(features, height, width))
        return torch.exp(logits[:, 0]), torch.exp(logits[:, 1]) + 1
