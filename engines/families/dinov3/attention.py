"""DINOv3's ViT attention with one packed projection and RoPE applied in one pass.

transformers' ``DINOv3ViTAttention.forward`` runs three projections (q, k, v), per-head views,
RoPE on the patch tokens of q and of k separately (split, ``rotate_half``, two products, a sum,
``cat`` back), then the attention function: ~20 small operations per layer. At ViT-S/16 and
224² (201 tokens) in bf16 each costs about as much to dispatch as to compute; measured on a
2-core AVX-512 BF16 CPU, the whole forward: 28.4 ms as transformers runs it, 26.0 with the
attention in blocks (:mod:`engines.attention`), 24.3 with this as well.

Here the q, k and v weights become views of one packed (3·width, width) matrix (the model keeps
one copy of them, under the same parameter names), one linear gives all three, RoPE rotates the
patch tokens of queries and keys together, in place, with the same operations in the same
order as transformers (so float32 agrees to rounding and bf16 rounds alike), and
:func:`engines.attention.attention_heads_last` attends (query blocks for bf16 on CPU, SDPA
elsewhere).

Per model instance. A trace (the ONNX export, which replaces the class's ``forward`` with its
own packed graph, see ``export/attention.py``), an attention mask, training or asking for the
attention weights run the class's own code.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engines.attention import attention_heads_last


def packed_attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``DINOv3ViTAttention.forward`` through the packed projection (see the module docstring)."""
    weight, bias = self.packed_qkv
    if (
        torch.jit.is_tracing()
        # ``to`` / ``half`` after packing gave the projections new tensors: the pack is stale
        or weight.data_ptr() != self.q_proj.weight.data_ptr()
        or attention_mask is not None
        or position_embeddings is None
        or self.training
        or kwargs.get("output_attentions")
    ):
        own: Any = type(self).forward  # looked up now: the exporter's patches replace it
        return own(self, hidden_states, attention_mask, position_embeddings, **kwargs)
    batch, tokens, _ = hidden_states.shape
    heads, dim = self.num_heads, self.head_dim
    qkv = F.linear(hidden_states, weight, bias).view(batch, tokens, 3, heads, dim)
    qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, tokens, dim)
    cos, sin = position_embeddings
    prefix = tokens - sin.shape[-2]  # class and register tokens: no rotation
    query_key = qkv[:2].contiguous()  # the attention wants them contiguous anyway
    patches = query_key[..., prefix:, :]
    half = dim // 2
    rotated = torch.cat((-patches[..., half:], patches[..., :half]), dim=-1)  # rotate_half
    patches.mul_(cos).add_(rotated.mul_(sin))  # q·cos + rotate_half(q)·sin, for q and k
    out = attention_heads_last(query_key[0], query_key[1], qkv[2], self.scaling)
    return self.o_proj(out.reshape(batch, tokens, heads * dim)), None


def pack_projections(attention: Any) -> None:
    """Make ``attention``'s q, k and v weights (and biases) views of one packed tensor."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    weight = torch.cat([p.weight.detach() for p in projections])
    bias = torch.cat(
        [
            p.bias.detach() if p.bias is not None else p.weight.new_zeros(p.out_features)
            for p in projections
        ]
    )
    start = 0
    for projection in projections:
        rows = slice(start, start + projection.out_features)
        projection.weight = nn.Parameter(weight[rows], requires_grad=False)
        if projection.bias is not None:
            projection.bias = nn.Parameter(bias[rows], requires_grad=False)
        start += projection.out_features
    attention.packed_qkv = (weight, bias)


def use_packed_attention(model: nn.Module) -> int:
    """Serve every ``DINOv3ViTAttention`` of this model instance through the packed forward.

    Call it after the model is on its device and in its dtype: ``to`` copies the views apart,
    and a layer whose pack is stale runs the class's own forward again. Returns how many
    attention layers were switched.
    """
    switched = 0
    for module in model.modules():
        if type(module).__name__ == "DINOv3ViTAttention":
            pack_projections(module)
            module.forward = types.MethodType(packed_attention_forward, module)
            switched += 1
    return switched
