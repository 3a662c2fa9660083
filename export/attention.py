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

DINOv3's attention (transformers' ``DINOv3ViTAttention``) gets more: traced as written it
becomes three projections, per-head transposes, RoPE on the patch tokens through split /
rotate / concat, and the dynamic shape arithmetic of every ``view`` (about 90 nodes per layer;
in the int8 graph this glue cost as much as the matrix products). While active, its forward is
recorded as one packed q/k/v projection (the three weight matrices concatenated) followed by
:class:`_RopeMultiHeadAttention`: q and k rotated together by one ``RotaryEmbedding`` whose
caches give the class and register tokens the identity (no split / concat of tokens), then one
``MultiHeadAttention``: 6 nodes a layer instead of about 90. Same arithmetic: the packed
projection computes each output column as the separate one did, and ``RotaryEmbedding``
computes ``x₁·cos − x₂·sin, x₂·cos + x₁·sin``, which is ``x·cos + rotate_half(x)·sin`` for
DINOv3's tables (each row's second half repeats its first; checked on the traced values, else
the model's own code is traced).
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

_original_sdpa = F.scaled_dot_product_attention


class _MultiHeadAttention(torch.autograd.Function):
    """SDPA when run; ``com.microsoft.MultiHeadAttention`` when exported."""

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        heads: int,
        scale: float,
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
            to_bsd(query),
            to_bsd(key),
            to_bsd(value),
            num_heads_i=heads,
            scale_f=scale,
        )
        # A contrib op has no ONNX shape inference: state its type ([B, S, heads·dim], the
        # queries' dtype), or the nodes after it are typed "undefined" and tools downstream
        # (the int8 quantiser) write models ONNX Runtime refuses.
        out.setType(query.type().with_sizes([None, None, None]))
        return g.op("Transpose", g.op("Reshape", out, split), perm_i=[0, 2, 1, 3])


def rope_tables(
    cos: torch.Tensor, sin: torch.Tensor, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3's RoPE as ``RotaryEmbedding`` caches: [tokens, dim / 2] each.

    ``cos`` and ``sin`` ([patches, dim], each row two copies of its first half, as DINOv3
    builds them) apply to the patch tokens; the ``prefix`` class and register tokens get the
    identity (cos 1, sin 0).
    """
    half = cos.shape[-1] // 2
    cos_cache = torch.cat((cos.new_ones(prefix, half), cos[:, :half]))
    sin_cache = torch.cat((sin.new_zeros(prefix, half), sin[:, :half]))
    return cos_cache, sin_cache


def apply_rope(x: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` on [B, S, heads, dim], from :func:`rope_tables`.

    ``rotate_half(x) * sin = [-x₂·s, x₁·s] = swap_halves(x) * [-s, s]`` bit for bit, and the
    prefix rows compute ``x * 1 + swapped * 0 = x``.
    """
    cos = torch.cat((cos_cache, cos_cache), dim=-1).unsqueeze(1)
    sin = torch.cat((-sin_cache, sin_cache), dim=-1).unsqueeze(1)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((second, first), dim=-1) * sin


class _RopeMultiHeadAttention(torch.autograd.Function):
    """RoPE + attention on packed q/k/v projections, [B, S, 3·heads·dim] -> [B, S, heads·dim].

    Run: :func:`apply_rope` on q and k, then SDPA. Exported: q and k rotated together by one
    ``com.microsoft.RotaryEmbedding`` (the caches of :func:`rope_tables`), then
    ``com.microsoft.MultiHeadAttention``, with constant-size splits and no transposes.
    """

    @staticmethod
    def forward(
        ctx: Any,
        qkv: torch.Tensor,
        cos_cache: torch.Tensor,
        sin_cache: torch.Tensor,
        heads: int,
        dim: int,
        scale: float,
    ) -> torch.Tensor:
        batch, tokens, _ = qkv.shape
        q, k, v = qkv.view(batch, tokens, 3, heads, dim).unbind(2)
        q, k = apply_rope(q, cos_cache, sin_cache), apply_rope(k, cos_cache, sin_cache)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        out = _original_sdpa(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(batch, tokens, heads * dim)

    @staticmethod
    def symbolic(
        g: Any, qkv: Any, cos_cache: Any, sin_cache: Any, heads: int, dim: int, scale: float
    ) -> Any:
        width = heads * dim

        def ints(*values: int) -> Any:
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        qk, v = g.op("Split", qkv, ints(2 * width, width), axis_i=2, outputs=2)
        # position_ids [1] is the start offset: token s reads row s of the caches
        rotated = g.op(
            "com.microsoft::RotaryEmbedding",
            qk,
            ints(0),
            cos_cache,
            sin_cache,
            num_heads_i=2 * heads,
            interleaved_i=0,
        )
        rotated.setType(qkv.type().with_sizes([None, None, 2 * width]))
        q, k = g.op("Split", rotated, ints(width, width), axis_i=2, outputs=2)
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)
        out.setType(qkv.type().with_sizes([None, None, width]))  # see _MultiHeadAttention
        return out


def _dinov3_attention(original: Callable[..., Any], fused: list[int]) -> Callable[..., Any]:
    """``DINOv3ViTAttention.forward`` traced as a packed projection + fused RoPE attention."""
    # The model computes cos / sin once per forward and hands the same tensors to every
    # layer: the caches are traced once for them and shared by all layers' nodes.
    tables: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(
        self: Any,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        if (
            not torch.jit.is_tracing()
            or attention_mask is not None
            or cos is None
            or sin is None
            or self.training
            or not _halves_repeat(cos, sin)
        ):
            return original(self, hidden_states, attention_mask, position_embeddings, **kwargs)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat(
            [
                p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                for p in projections
            ]
        )
        qkv = F.linear(hidden_states, weight, bias)
        if id(cos) not in tables:  # the tensor is kept with its caches: its id stays unique
            tables[id(cos)] = cos, rope_tables(cos, sin, 1 + self.config.num_register_tokens)
        cos_cache, sin_cache = tables[id(cos)][1]
        fused[0] += 1
        out = _RopeMultiHeadAttention.apply(
            qkv, cos_cache, sin_cache, self.num_heads, self.head_dim, float(self.scaling)
        )
        return self.o_proj(out), None

    return forward


def _halves_repeat(cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether every row of ``cos`` and ``sin`` is its first half twice.

    That is what ``RotaryEmbedding``'s half-width caches can express.
    """
    half = cos.shape[-1] // 2
    return bool(
        torch.equal(cos[..., :half], cos[..., half:])
        and torch.equal(sin[..., :half], sin[..., half:])
    )


def dinov3_rope(module: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DINOv3ViTRopePositionEmbedding.forward`` (inference) with ``cat`` for ``tile``.

    The legacy exporter writes ``angles.tile(2)`` with two ``If`` nodes (rank padding), which
    ONNX Runtime's symbolic shape inference cannot follow, so the transformer optimiser (and
    any tool that infers shapes) gave up on the whole graph. ``cat((angles, angles))`` is the
    same tensor.
    """
    from transformers.models.dinov3_vit.modeling_dinov3_vit import (
        get_patches_center_coordinates,
    )

    _, _, height, width = pixel_values.shape
    patch = module.config.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
    coords = get_patches_center_coordinates(
        height // patch_h, width // patch_w, dtype=torch.float32, device=pixel_values.device
    )
    angles = 2 * math.pi * coords[:, :, None] * module.inv_freq[None, None, :]
    angles = angles.flatten(1, 2)
    angles = torch.cat((angles, angles), dim=-1)
    dtype = pixel_values.dtype
    return torch.cos(angles).to(dtype=dtype), torch.sin(angles).to(dtype=dtype)


def _dinov3_rope_embedding(original: Callable[..., Any], fused: list[int]) -> Callable[..., Any]:
    def forward(self: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() or self.training:
            return original(self, pixel_values)
        return dinov3_rope(self, pixel_values)

    return forward


# (module, class) -> wrapper of its forward, replaced while tracing (see the module docstring)
_TRACED_FORWARDS: dict[tuple[str, str], Callable[..., Callable[..., Any]]] = {
    ("transformers.models.dinov3_vit.modeling_dinov3_vit", "DINOv3ViTAttention"): _dinov3_attention,
    (
        "transformers.models.dinov3_vit.modeling_dinov3_vit",
        "DINOv3ViTRopePositionEmbedding",
    ): _dinov3_rope_embedding,
}


def _fusable(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: Any,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
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

    DINOv3's attention and RoPE table forwards are replaced as well (module docstring).

    Yields:
        A one-element list: how many calls were fused (read it after the block).
    """
    fused = [0]

    def sdpa(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        if not _fusable(query, key, attn_mask, dropout_p, is_causal, enable_gqa):
            return _original_sdpa(
                query,
                key,
                value,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        # Heads and head size are fixed by the weights; under tracing they come as 0-d tensors.
        heads, head_dim = int(query.shape[1]), int(query.shape[3])
        shapes = [(int(x.shape[0]), int(x.shape[1])) for x in (query, key, value)]
        if len(set(shapes)) > 1:  # batch or heads broadcast: MultiHeadAttention cannot
            return _original_sdpa(query, key, value, scale=scale)
        fused[0] += 1
        scale = float(scale) if scale is not None else head_dim**-0.5
        return _MultiHeadAttention.apply(query, key, value, heads, scale)

    originals: list[tuple[type, Callable[..., Any]]] = []
    for (module_name, class_name), wrapper in _TRACED_FORWARDS.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        originals.append((cls, cls.forward))
        cls.forward = wrapper(cls.forward, fused)
    F.scaled_dot_product_attention = sdpa
    try:
        yield fused
    finally:
        F.scaled_dot_product_attention = _original_sdpa
        for cls, forward in originals:
            cls.forward = forward  # type: ignore[attr-defined]
