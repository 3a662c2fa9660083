"""DA3's DINOv2 backbone, for independent images and for the views of one scene.

From ``alt_start`` the reference alternates per-view ("local", even blocks) and all-view
("global", odd blocks) attention, and swaps the CLS token for a camera token. The two kinds
also differ in their RoPE positions: local blocks see the patch grid, global blocks see every
patch at one shared position. :meth:`VisionTransformer.forward` runs independent images (the
reference's view axis is 1: both kinds attend over one image's tokens);
:meth:`VisionTransformer.forward_scene` runs the views of one scene, whose global blocks attend
over all views' tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.families.depth_anything.da3.blocks import Block, RopeTable, rope_table
from engines.families.depth_anything.da3.config import Da3Config
from engines.families.depth_anything.da3.views import input_order, reference_first, reference_view

# The output of one selected block: (patch features [B, P, C'], camera token [B, C']).
LayerOutput = tuple[Tensor, Tensor]
Size = int | Tensor  # a spatial size: a plain int, or a traced size under ONNX export

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic kernel parameter


def _cubic_weights(t: Tensor) -> Tensor:
    """PyTorch's bicubic weights of the four taps around fractional offsets ``t``: [..., 4]."""
    a = CUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack((far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)), dim=-1)


def bicubic_matrix(
    size_out: Size, size_in: int, inverse_scale: float | Tensor, device: torch.device
) -> Tensor:
    """[size_out, size_in] weights of ``F.interpolate(mode="bicubic", scale_factor=s)``.

    Equal to PyTorch's kernel (align_corners False, source = (dst + 0.5) / s - 0.5 in
    float32, taps clamped at the borders) up to float32 summation order, but written with
    tensor arithmetic only, so that ``size_out`` and ``1 / s`` may be traced sizes: the
    interpolated position embedding then follows the input size of an exported graph.
    """
    source = torch.arange(size_out, dtype=torch.float32, device=device)  # type: ignore[arg-type]
    source = (source + 0.5) * inverse_scale
    source = source - 0.5
    first = torch.floor(source)
    weights = _cubic_weights(source - first)
    offsets = torch.arange(-1, 3, device=device)
    taps = (first.long()[:, None] + offsets[None]).clamp(0, size_in - 1)
    one_hot = taps[..., None] == torch.arange(size_in, device=device)[None, None]
    one_hot = one_hot.to(weights.dtype)
    return (weights[..., None] * one_hot).sum(dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, (H/p)·(W/p), dim], row-major over the patch grid."""
        return self.proj(pixels).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINOv2 ViT with DA3's camera token, alternating attention and ``cat_token`` outputs."""

    def __init__(self, config: Da3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.patch_size = config.patch_size
        grid = config.pos_embed_size // config.patch_size
        self.pos_grid = grid
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if config.alt_start >= 0:
            # Token 0 is for the reference view, token 1 for the other views of a scene.
            self.camera_token = nn.Parameter(torch.zeros(1, 2, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                ffn_kind=config.ffn_kind,
                qk_norm=0 <= config.qknorm_start <= i,
            )
            for i in range(config.depth)
        )
        # nn.LayerNorm's default eps (1e-5), unlike the blocks' 1e-6: as in the reference.
        self.norm = nn.LayerNorm(dim)

    def _position_embedding(self, grid_h: Size, grid_w: Size) -> Tensor:
        """Resize the learned position embedding bicubically to the patch grid.

        Resizing uses a scale factor of (grid + 0.1) / trained_grid, as DINOv2 does, and leaves
        the embedding as it is at the trained size (when tracing for export it always
        resizes: a graph exported from a DA3 input, at most 36 patches a side, never sees 37).
        """
        if not torch.jit.is_tracing() and grid_h == grid_w == self.pos_grid:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        table = self.pos_embed.float()
        patches = table[0, 1:].reshape(self.pos_grid, self.pos_grid, dim).permute(2, 0, 1)
        device = table.device
        rows = bicubic_matrix(grid_h, self.pos_grid, self.pos_grid / (grid_h + 0.1), device)
        cols = bicubic_matrix(grid_w, self.pos_grid, self.pos_grid / (grid_w + 0.1), device)
        # Along rows of the table first, then columns, as PyTorch's kernel sums.
        patches = rows @ (patches @ cols.transpose(0, 1))  # [dim, grid_h, grid_w]
        patches = patches.permute(1, 2, 0).reshape(1, -1, dim)
        return torch.cat((table[:, :1], patches), dim=1).to(self.pos_embed.dtype)

    def _rope_tables(self, grid_h: Size, grid_w: Size, x: Tensor) -> tuple[RopeTable, RopeTable]:
        """RoPE tables for local blocks (patch grid) and global blocks (one shared position).

        The special token 0 sits at position (0, 0); patches start at (1, 1).
        """
        # torch's stubs take int sizes only; traced sizes (tensors) work as well.
        row_index = torch.arange(grid_h, device=x.device)[:, None]  # type: ignore[arg-type]
        col_index = torch.arange(grid_w, device=x.device)[None, :]  # type: ignore[arg-type]
        rows = (row_index + torch.zeros_like(col_index)).reshape(-1) + 1
        cols = (col_index + torch.zeros_like(row_index)).reshape(-1) + 1
        zero = torch.zeros(1, dtype=rows.dtype, device=x.device)
        shared = torch.ones_like(rows)
        head_dim = self.config.embed_dim // self.config.num_heads
        freq = self.config.rope_frequency
        local = rope_table(
            torch.cat((zero, rows)), torch.cat((zero, cols)), head_dim, freq, x.dtype
        )
        glob = rope_table(
            torch.cat((zero, shared)), torch.cat((zero, shared)), head_dim, freq, x.dtype
        )
        return local, glob

    def _embed(self, pixels: Tensor) -> tuple[Tensor, tuple[RopeTable, RopeTable] | None]:
        """Tokens [B, 1 + P, C] (CLS first) and the (local, global) RoPE tables, if any."""
        # Plain ints eagerly; traced sizes under ONNX export, so H and W stay dynamic.
        grid_h = pixels.shape[-2] // self.patch_size
        grid_w = pixels.shape[-1] // self.patch_size
        x = self.patch_embed(pixels)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self._position_embedding(grid_h, grid_w)
        ropes = self._rope_tables(grid_h, grid_w, x) if self.config.rope_start >= 0 else None
        return x, ropes

    def _rope(
        self, ropes: tuple[RopeTable, RopeTable] | None, i: int, is_global: bool
    ) -> RopeTable | None:
        if ropes is None or i < self.config.rope_start:
            return None
        return ropes[1] if is_global else ropes[0]

    def _is_global(self, i: int) -> bool:
        return 0 <= self.config.alt_start <= i and i % 2 == 1

    def forward(self, pixels: Tensor) -> list[LayerOutput]:
        """Run the blocks on independent images; return the features of ``config.out_layers``.

        Args:
            pixels: Normalised images [B, 3, H, W], H and W multiples of the patch size.

        Returns:
            One ``(patch_features, camera_token)`` per output layer. Patch features exclude
            token 0; with ``cat_token`` they are concat(last local output, normalised current
            output), and the camera token is token 0 of the same concat, not normalised.

        """
        cfg = self.config
        x, ropes = self._embed(pixels)
        local_x = x
        outputs: list[LayerOutput] = []
        for i, block in enumerate(self.blocks):
            if i == cfg.alt_start:
                camera = self.camera_token[:, :1].expand(x.shape[0], -1, -1)
                x = torch.cat((camera, x[:, 1:]), dim=1)
                # The reference writes the token in place, so the last local output sees it too.
                local_x = x
            is_global = self._is_global(i)
            x = block(x, self._rope(ropes, i, is_global))
            if not is_global:
                local_x = x
            if i in cfg.out_layers:
                outputs.append(self._layer_output(local_x, x))
        return outputs

    def learned_camera_tokens(self, views: int | Tensor) -> Tensor:
        """[views, C] learned camera tokens of a scene: the reference view's first."""
        is_source = torch.arange(views, device=self.camera_token.device) > 0  # type: ignore[arg-type]
        return self.camera_token[0, is_source.long()]

    def forward_scene(
        self,
        pixels: Tensor,
        camera_tokens: Tensor,
        strategy: int | Tensor,
        selects: Tensor,
    ) -> list[LayerOutput]:
        """Run the blocks on the views of one scene, as the reference's multi-view forward.

        Before block ``alt_start - 1`` the reference view (see
        :func:`~engines.families.depth_anything.da3.views.reference_view`) moves to the
        front; outputs come back in the input order. Global blocks attend over the tokens of
        all views.

        Args:
            pixels: Normalised views [S, 3, H, W], H and W multiples of the patch size.
            camera_tokens: [S, C] camera token of each view after reordering (when no
                reference view is selected, the order is the input's).
            strategy: Index into ``REF_VIEW_STRATEGIES``.
            selects: Bool scalar: whether a reference view is selected (else view 0 stays
                the reference).

        Returns:
            As :meth:`forward`, one entry per view along the first axis.

        """
        cfg = self.config
        x, ropes = self._embed(pixels)
        views = x.shape[0]
        if ropes is not None:  # every view's global table, end to end as the tokens
            ropes = ropes[0], (ropes[1][0].repeat(views, 1), ropes[1][1].repeat(views, 1))
        restore: Tensor | None = None  # outputs before the reordering keep the input order
        local_x = x
        outputs: list[LayerOutput] = []
        for i, block in enumerate(self.blocks):
            if i == cfg.alt_start - 1:
                reference = reference_view(x[:, 0], strategy, selects)
                x = x[reference_first(reference, views)]
                restore = input_order(reference, views)
            if i == cfg.alt_start:
                x = torch.cat((camera_tokens[:, None].to(x.dtype), x[:, 1:]), dim=1)
                local_x = x  # written in place by the reference, as in forward
            is_global = self._is_global(i)
            rope = self._rope(ropes, i, is_global)
            if is_global:
                x = block(x.reshape(1, -1, x.shape[-1]), rope).view_as(x)
            else:
                x = local_x = block(x, rope)
            if i in cfg.out_layers:
                features, camera = self._layer_output(local_x, x)
                if restore is not None:
                    features, camera = features[restore], camera[restore]
                outputs.append((features, camera))
        return outputs

    def _layer_output(self, local_x: Tensor, x: Tensor) -> LayerOutput:
        if self.config.cat_token:
            camera = torch.cat((local_x[:, 0], x[:, 0]), dim=-1)
            features = torch.cat((local_x, self.norm(x)), dim=-1)
        else:
            camera = x[:, 0]
            features = self.norm(x)
        return features[:, 1:], camera


class Backbone(nn.Module):
    """Holds the ViT as ``pretrained``, the name its weights have in the checkpoint."""

    def __init__(self, config: Da3Config) -> None:
        super().__init__()
        self.pretrained = VisionTransformer(config)

    def forward(self, pixels: Tensor) -> list[LayerOutput]:
        """See :meth:`VisionTransformer.forward`."""
        return self.pretrained(pixels)

    def forward_scene(
        self, pixels: Tensor, camera_tokens: Tensor, strategy: int | Tensor, selects: Tensor
    ) -> list[LayerOutput]:
        """See :meth:`VisionTransformer.forward_scene`."""
        return self.pretrained.forward_scene(pixels, camera_tokens, strategy, selects)
