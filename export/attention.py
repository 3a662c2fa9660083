"""Export plain scaled-dot-product attention as ONNX Runtime's fused ``MultiHeadAttention``.

The legacy exporter writes ``F.scaled_dot_product_attention`` as MatMul → Softmax → MatMul,
which ONNX Runtime runs as three kernels with the full [B, heads, S, S] score matrix in memory
between them. ``com.microsoft.MultiHeadAttention`` computes the same attention in one kernel
(FlashAttention-style tiles on the CPU provider, fused kernels on the CUDA provider), and ORT's
transformer optimiser cannot recover it from our graphs: queries and keys go through RoPE or a
qk LayerNorm between the projection and the product, which its pattern matcher does not know.

While :func:`fused_attention` is active, a traced call of ``scaled_dot_product_attention`` with
4-D inputs, no mask, no causal flag and no dropout is recorded as one ``MultiHeadAttention``
node (inputs transposed to [B, S, heads·dim], output back to [B, heads, S, dim]); its value
during the trace is the original function's, so nothing the model computes changes. Any other
call (a mask, an eager run) goes to the original function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

_original_sdpa = F.scaled_dot_product_attention


class _MultiHeadAttention(torch.autograd.Function):
    """SDPA when run; ``com.microsoft.MultiHeadAttention`` when exported."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        heads: int, scale: float,
    ) -> torch.Tensor:
        return _original_sdpa(query, key, value, scale=scale)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, heads: int, scale: float) -> Any:
        merged = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        split = g.op("Constant", value_t=torch.tensor([0, 0, heads, -1], dtype=torch.int64))

        def to_bsd(x: Any) -> Any:  # [B, heads, S, dim] -> [B, S, heads·dim]
            return g.op("Reshape", g.op("Transpose", x, perm_i=[0, 2, 1, 3]), merged)

        out = g.op(
            "com.microsoft::MultiHeadAttention",
            to_bsd(query), to_bsd(key), to_bsd(value),
            num_heads_i=heads, scale_f=scale,
        )
        # A contrib op has no ONNX shape inference: state its type ([B, S, heads·dim], the
        # queries' dtype), or the nodes after it are typed "undefined" and tools downstream
        # (the int8 quantiser) write models ONNX Runtime refuses.
        out.setType(query.type().with_sizes([None, None, None]))
        return g.op("Transpose", g.op("Reshape", out, split), perm_i=[0, 2, 1, 3])


def _fusable(
    query: torch.Tensor, key: torch.Tensor, attn_mask: Any, dropout_p: float,
    is_causal: bool, enable_gqa: bool,
) -> bool:
    return (
        torch.jit.is_tracing()
        and attn_mask is None
        and not is_causal
        and not enable_gqa
        and dropout_p == 0.0
        and query.dim() == 4
        and key.dim() == 4
    )


@contextlib.contextmanager
def fused_attention() -> Iterator[list[int]]:
    """Record plain SDPA calls as ``MultiHeadAttention`` while active.

    Yields:
        A one-element list: how many calls were fused (read it after the block).
    """
    fused = [0]

    def sdpa(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
        is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
    ) -> torch.Tensor:
        if not _fusable(query, key, attn_mask, dropout_p, is_causal, enable_gqa):
            return _original_sdpa(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
            )
        # Heads and head size are fixed by the weights; under tracing they come as 0-d tensors.
        heads, head_dim = int(query.shape[1]), int(query.shape[3])
        shapes = [(int(x.shape[0]), int(x.shape[1])) for x in (query, key, value)]
        if len(set(shapes)) > 1:  # batch or heads broadcast: MultiHeadAttention cannot
            return _original_sdpa(query, key, value, scale=scale)
        fused[0] += 1
        scale = float(scale) if scale is not None else head_dim**-0.5
        return _MultiHeadAttention.apply(query, key, value, heads, scale)

    F.scaled_dot_product_attention = sdpa
    try:
        yield fused
    finally:
        F.scaled_dot_product_attention = _original_sdpa
