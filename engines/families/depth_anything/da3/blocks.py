"""Transformer pieces of the DA3 backbone: pre-norm blocks with optional qk-norm and 2D RoPE.

Attribute names follow the checkpoint (``attn.qkv``, ``ls1.gamma``, ``mlp.fc1``...), so the
official state dict loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.attention import attention_heads_last

# (cos, sin), each [tokens, head_dim]: the rotation one block applies to queries and keys.
RopeTable = tuple[Tensor, Tensor]


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch."""

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        """Scale ``x`` channel-wise."""
        return x * self.gamma


class Mlp(nn.Module):
    """Two linear layers with a GELU in between."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out or dim_in)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to the last axis."""
        return self.fc2(self.act(self.fc1(x)))


class SwiGluFfn(nn.Module):
    """SwiGLU feed-forward layer of ViT-giant (gate and value in one fused projection)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # DINOv2 shrinks the nominal hidden width by 2/3 and rounds it up to a multiple of 8.
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated feed-forward layer to the last axis."""
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def _rotate_pairs(x: Tensor) -> Tensor:
    """Rotate each of the two (y, x) halves of the head dimension by a quarter turn.

    With a half split into (a1, a2) this returns (-a2, a1), as 1D RoPE does per axis.
    """
    x = x.unflatten(-1, (2, 2, -1))
    return torch.stack((-x[..., 1, :], x[..., 0, :]), dim=-2).flatten(-3)


def apply_rope(x: Tensor, table: RopeTable) -> Tensor:
    """Rotate queries or keys ``x`` [B, heads, tokens, head_dim] by the table's angles."""
    cos, sin = table
    return x * cos + _rotate_pairs(x) * sin


def rope_table(
    rows: Tensor, cols: Tensor, head_dim: int, frequency: float, dtype: torch.dtype
) -> RopeTable:
    """Cos/sin tables of 2D RoPE for tokens at integer grid positions ``(rows, cols)``.

    The first half of the head dimension encodes the row, the second the column; within each
    half the angles repeat once (``cat(angles, angles)``), matching the rotate-half layout.

    Args:
        rows: Row index of every token, shape [tokens].
        cols: Column index of every token, shape [tokens].
        head_dim: Channels per attention head (divisible by 4).
        frequency: RoPE base frequency.
        dtype: dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each [tokens, head_dim].

    """
    half = head_dim // 2
    exponents = torch.arange(0, half, 2, device=rows.device).float() / half
    inv_freq = 1.0 / (frequency**exponents)
    angles_y = rows.float()[:, None] * inv_freq[None]
    angles_x = cols.float()[:, None] * inv_freq[None]
    angles = torch.cat((angles_y, angles_y, angles_x, angles_x), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention (SDPA) with optional qk LayerNorm and 2D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        """Attend over the token axis of ``x`` [B, tokens, dim]."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attention_heads_last(q, k, v)  # bf16 on CPU: query blocks, SDPA elsewhere
        return self.proj(out.reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block with layer-scaled residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        ffn_kind: str = "mlp",
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        layer_scale: float = 1.0,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp: nn.Module = SwiGluFfn(dim, hidden) if ffn_kind == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, layer_scale)

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        """Run attention then feed-forward, each as a residual branch."""
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
