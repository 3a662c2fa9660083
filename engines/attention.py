"""Self-attention for bf16 on CPUs with bf16 matrix units: blocks of queries through matmul.

torch's CPU kernel behind ``scaled_dot_product_attention`` (its flash attention) runs bf16 no
faster than float32: on a 2-core AVX-512 BF16 EPYC, 6 heads × 2,036 tokens take ~39 ms in
either dtype, where the same work as two bf16 matrix products (oneDNN, on the bf16 units) and
a softmax takes ~17 ms. Written out whole, the products are fast but the (heads, tokens,
tokens) score tensor goes through memory twice (44 ms); in blocks of 128 query rows each
block's scores stay in cache. Measured with ``benchmarks/bench_attention.py``: 1.1-2.2x the
kernel at every size the served models use (201 to 5,184 tokens, batch 1 to 9), which makes
DA-V2-small's whole bf16 forward 1.25-1.5x faster (1.54x with its weights channels-last).

Precision: the block's scores are rounded to bf16 before the softmax (the flash kernel keeps
them in float32). Against a float32 model the difference disappears in the bf16 model's own
error, which comes from its bf16 weights and activations: DA-V2-small's depth relative error
to float32 is 0.0053 with either kernel, 0.013 against 0.012 with query/key weights scaled up
to give logits of 125, 0.053 against 0.051 at logits of 500 (see the unit tests for the
kernel-level bounds). The bf16 check at load measures it again on the real weights.

Only bf16 CPU tensors without a mask, dropout, gradients or a trace take the blocks; anything
else (float32, where the flash kernel is the faster one, CUDA, the ONNX exporter's trace)
runs ``scaled_dot_product_attention`` as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

# The name the kernel is registered under in transformers' attention registry.
NAME = "vision_api_blocked"
# Query rows per block: the fastest of 64 / 128 / 256 at every measured size.
BLOCK_ROWS = 128


def takes_blocks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether :func:`attention_heads_last` runs the blocks for these tensors (module docstring)."""
    return (
        query.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and key.dtype == value.dtype == torch.bfloat16
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and query.requires_grad)
    )


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(query · keyᵀ · scale) · value, one block of query rows at a time.

    Args:
        query: (..., queries, dim).
        key: (..., keys, dim), the same leading dimensions.
        value: (..., keys, value_dim).
        scale: Applied to the scores; ``dim ** -0.5`` when None, as SDPA.
        out: Where to write the result, (..., queries, value_dim), any strides (a transposed
            view lets a caller get (B, N, heads, dim) without another copy); a new tensor when
            None.

    Returns:
        ``out``, in the dtype of ``query``.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    *lead, queries, dim = query.shape
    keys, value_dim = key.shape[-2], value.shape[-1]
    if out is None:
        out = query.new_empty((*lead, queries, value_dim))
    # Three-dimensional and contiguous once per call: transformers hands over (B, heads, N, dim)
    # views of (B, N, heads · dim) projections, which ``matmul`` would otherwise copy again
    # for every block. The queries are scaled in the same pass, not the scores.
    scaled = torch.empty((*lead, queries, dim), dtype=query.dtype, device=query.device)
    torch.mul(query, scale, out=scaled)
    scaled = scaled.view(-1, queries, dim)
    keys_t = key.contiguous().view(-1, keys, dim).transpose(1, 2)
    value = value.contiguous().view(-1, keys, value_dim)
    target = out.view(-1, queries, value_dim) if out.is_contiguous() else None
    for start in range(0, queries, BLOCK_ROWS):
        rows = slice(start, start + BLOCK_ROWS)
        weights = torch.softmax(torch.bmm(scaled[:, rows], keys_t), dim=-1)
        if target is not None:
            torch.bmm(weights, value, out=target[:, rows])
        else:
            out[..., rows, :] = torch.bmm(weights, value).view(*lead, -1, value_dim)
    return out


def attention_heads_last(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Unmasked attention of (B, heads, N, dim) tensors, answered as (B, N, heads, dim).

    The blocks where they are the measured path, SDPA elsewhere. (B, N, heads, dim) is the
    layout the output projection reads; the blocks write it directly (no transpose copy).
    """
    if takes_blocks(query, key, value):
        batch, heads, queries, _ = query.shape
        out = query.new_empty((batch, queries, heads, value.shape[-1]))
        blocked_attention(query, key, value, scale, out=out.transpose(1, 2))
        return out
    return F.scaled_dot_product_attention(query, key, value, scale=scale).transpose(1, 2)


def _transformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function contract: (B, heads, N, dim) in, (B, N, heads, dim) out.

    Anything the blocks do not cover (a mask, dropout, causal or grouped-query attention, a
    position bias, float32) goes to transformers' own SDPA function with the same arguments.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        attention_mask is None
        and dropout == 0.0
        # As transformers' SDPA function: a module that does not say otherwise is causal.
        and not (is_causal if is_causal is not None else getattr(module, "is_causal", True))
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None
        and query.shape[-1] == key.shape[-1]
        and query.shape[1] == key.shape[1]
    )
    if plain and takes_blocks(query, key, value):
        return attention_heads_last(query, key, value, scaling), None
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal,
        **kwargs,
    )


def use_blocked_attention(model: torch.nn.Module) -> int:
    """Route every SDPA attention layer of a transformers ``model`` through the bf16 blocks.

    The kernel is registered in transformers' attention and mask registries once; each
    configuration in the model (the model's and its sub-models', e.g. a backbone) that names
    ``sdpa`` is switched to it. Layers read the name at every forward, so the switch holds for
    this model instance only; eager or other implementations are left alone.

    Returns:
        How many configurations were switched.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _transformers_attention)
        # Masks (text padding, causal) are built as for SDPA, which the function falls back to
        # whenever there is one; a name without a mask function gets no mask at all.
        AttentionMaskInterface.register(NAME, sdpa_mask)
    switched = 0
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        if getattr(config, "_attn_implementation", None) == "sdpa":
            # The internal field: the property's setter would also overwrite every sub-config,
            # eager ones included, with the same name.
            config._attn_implementation_internal = NAME
            switched += 1
    return switched
