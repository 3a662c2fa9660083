"""DA3's DINOv2 backbone, for independent single views (the view axis N is 1).

From ``alt_start`` the reference alternates per-view ("local", even blocks) and all-view
("global", odd blocks) attention, and swaps the CLS token for a learned camera token. With one
view per image both kinds attend over the same tokens; they differ only in their RoPE positions:
local blocks see the patch grid, global blocks see every patch at one shared position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.families.da3.blocks import Block, RopeTable, rope_table
from engines.families.da3.config import Da3Config

# The output of one selected block: (patch features [B, P, C'], camera token [B, C']).
LayerOutput = tuple[Tensor, Tensor]


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
            # Token 0 is for the reference view, token 1 for other views (unused here: N=1).
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

    def _position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """Resize the learned position embedding bicubically to the patch grid.

        Resizing uses a scale factor of (grid + 0.1) / trained_grid, as DINOv2 does, and leaves
        the embedding as it is at the trained size.
        """
        if grid_h == grid_w == self.pos_grid:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        table = self.pos_embed.float()
        patches = table[:, 1:].reshape(1, self.pos_grid, self.pos_grid, dim).permute(0, 3, 1, 2)
        patches = F.interpolate(
            patches,
            scale_factor=((grid_h + 0.1) / self.pos_grid, (grid_w + 0.1) / self.pos_grid),
            mode="bicubic",
        )
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((table[:, :1], patches), dim=1).to(self.pos_embed.dtype)

    def _rope_tables(self, grid_h: int, grid_w: int, x: Tensor) -> tuple[RopeTable, RopeTable]:
        """RoPE tables for local blocks (patch grid) and global blocks (one shared position).

        The special token 0 sits at position (0, 0); patches start at (1, 1).
        """
        rows = torch.arange(grid_h, device=x.device).repeat_interleave(grid_w) + 1
        cols = torch.arange(grid_w, device=x.device).repeat(grid_h) + 1
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

    def forward(self, pixels: Tensor) -> list[LayerOutput]:
        """Run the blocks and return the normalised features of ``config.out_layers``.

        Args:
            pixels: Normalised images [B, 3, H, W], H and W multiples of the patch size.

        Returns:
            One ``(patch_features, camera_token)`` per output layer. Patch features exclude
            token 0; with ``cat_token`` they are concat(last local output, normalised current
            output), and the camera token is token 0 of the same concat, not normalised.

        """
        cfg = self.config
        batch = pixels.shape[0]
        # Plain ints: under tracing the grid becomes a constant (export with a fixed H x W).
        grid_h = int(pixels.shape[-2]) // self.patch_size
        grid_w = int(pixels.shape[-1]) // self.patch_size
        x = self.patch_embed(pixels)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + self._position_embedding(grid_h, grid_w)
        ropes = self._rope_tables(grid_h, grid_w, x) if cfg.rope_start >= 0 else None

        local_x = x
        outputs: list[LayerOutput] = []
        for i, block in enumerate(self.blocks):
            if i == cfg.alt_start:
                camera = self.camera_token[:, :1].expand(batch, -1, -1)
                x = torch.cat((camera, x[:, 1:]), dim=1)
                # The reference writes the token in place, so the last local output sees it too.
                local_x = x
            is_global = 0 <= cfg.alt_start <= i and i % 2 == 1
            rope = None
            if ropes is not None and i >= cfg.rope_start:
                rope = ropes[1] if is_global else ropes[0]
            x = block(x, rope)
            if not is_global:
                local_x = x
            if i in cfg.out_layers:
                outputs.append(self._layer_output(local_x, x))
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
