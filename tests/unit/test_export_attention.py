"""Plain attention exported as ONNX Runtime's fused MultiHeadAttention (export/attention.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from export.attention import fused_attention
from tests.conftest import onnx_op_types


class _SelfAttention(torch.nn.Module):
    """A projection to q/k/v heads, SDPA, and back: the shape ViT blocks have."""

    def __init__(self, dim: int = 48, heads: int = 4, scale: float | None = None) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q = self.qkv(x)[..., :dim].reshape(batch, tokens, self.heads, -1).transpose(1, 2)
        kv = self.qkv(memory)[..., dim:].reshape(batch, memory.shape[1], 2, self.heads, -1)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return out.transpose(1, 2).reshape(batch, tokens, dim)


class _MaskedAttention(torch.nn.Module):
    def forward(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path
) -> int:
    axes = {name: {0: "batch", 1: f"{name}_tokens"} for name in names}
    with torch.no_grad(), fused_attention() as fused:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=18,
        )
    return fused[0]


@pytest.mark.parametrize("scale", [None, 0.3])
def test_plain_attention_becomes_one_fused_node_with_the_same_values(
    tmp_path: Path, scale: float | None
) -> None:
    torch.manual_seed(0)
    module = _SelfAttention(scale=scale).eval()
    path = tmp_path / "attention.onnx"
    example = (torch.randn(2, 7, 48), torch.randn(2, 5, 48))
    assert _export(module, example, ["x", "memory"], path) == 1
    ops = onnx_op_types(path)
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops
    # Every intermediate has a type (the int8 quantiser writes unloadable models otherwise).
    undefined = onnx.TensorProto.UNDEFINED
    value_info = onnx.load(str(path)).graph.value_info
    assert all(v.type.tensor_type.elem_type != undefined for v in value_info)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Other batch sizes and token counts than the example (dynamic axes), cross-attention
    # (memory longer than the queries) included.
    for batch, tokens, memory_tokens in [(1, 7, 5), (3, 20, 33), (4, 257, 257)]:
        x, memory = torch.randn(batch, tokens, 48), torch.randn(batch, memory_tokens, 48)
        (got,) = session.run(None, {"x": x.numpy(), "memory": memory.numpy()})
        with torch.no_grad():
            expected = module(x, memory).numpy()
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_masked_attention_keeps_the_plain_decomposition(tmp_path: Path) -> None:
    path = tmp_path / "masked.onnx"
    q = torch.randn(2, 4, 6, 8)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    axes = {"q": {0: "batch"}, "mask": {0: "batch"}}
    with torch.no_grad(), fused_attention() as fused:
        torch.onnx.export(
            _MaskedAttention(),
            (q, mask),
            str(path),
            dynamo=False,
            input_names=["q", "mask"],
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=18,
        )
    assert fused[0] == 0
    ops = onnx_op_types(path)
    assert "MultiHeadAttention" not in ops and "Softmax" in ops


def test_eager_calls_are_untouched_and_the_function_is_restored() -> None:
    original = F.scaled_dot_product_attention
    q = torch.randn(1, 2, 5, 8)
    with fused_attention() as fused:
        assert F.scaled_dot_product_attention is not original
        inside = F.scaled_dot_product_attention(q, q, q)
    assert fused[0] == 0
    assert F.scaled_dot_product_attention is original
    torch.testing.assert_close(inside, original(q, q, q), rtol=0, atol=0)


def test_dinov3_rope_tables_rotate_exactly_as_the_model() -> None:
    from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

    from export.attention import apply_rope, rope_tables

    torch.manual_seed(0)
    prefix, patches, heads, dim = 5, 12, 3, 16
    q, k = torch.randn(2, 2, heads, prefix + patches, dim).unbind(0)  # [B, heads, S, dim]
    angles = torch.rand(patches, dim // 2) * 6.3
    cos, sin = torch.cos(angles).tile(2), torch.sin(angles).tile(2)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    cos_cache, sin_cache = rope_tables(cos, sin, prefix)
    assert cos_cache.shape == (prefix + patches, dim // 2)
    for x, expected in ((q, expected_q), (k, expected_k)):
        got = apply_rope(x.transpose(1, 2), cos_cache, sin_cache).transpose(1, 2)
        assert torch.equal(got, expected)  # bit for bit


def _tiny_dinov3() -> torch.nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=16,
        num_register_tokens=4,
        key_bias=False,
    )
    model = DINOv3ViTModel(config).eval()
    with torch.no_grad():  # unit-variance class/register tokens: see bench_onnx_vs_torch.py
        for name, param in model.embeddings.named_parameters():
            if "token" in name:
                param.normal_()

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).last_hidden_state

    return Tokens().eval()


def test_dinov3_attention_exports_as_packed_projection_and_fused_attention(
    tmp_path: Path,
) -> None:
    module = _tiny_dinov3()
    path = tmp_path / "dinov3.onnx"
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad(), fused_attention() as fused:
        torch.onnx.export(
            module,
            (torch.randn(2, 3, 64, 96),),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=18,
        )
    assert fused[0] == 2
    ops = onnx_op_types(path)
    # Per layer one q/k/v product, the output projection and the two MLP products; RoPE as
    # one node, without the per-head transposes or the token split/concat of the model's code.
    assert ops.count("MultiHeadAttention") == 2 and ops.count("MatMul") == 2 * 4
    assert ops.count("RotaryEmbedding") == 2
    assert "Softmax" not in ops and ops.count("Transpose") <= 1  # the patch embedding's
    assert "If" not in ops  # (tile) ONNX Runtime's symbolic shape inference cannot follow it
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Other batches and sizes than the example: the RoPE tables follow the patch grid.
    for shape in [(1, 3, 64, 96), (3, 3, 128, 32), (1, 3, 224, 224)]:
        x = torch.randn(*shape)
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # Outside the export the model runs its own code again.
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTAttention

    assert DINOv3ViTAttention.forward.__qualname__.startswith("DINOv3ViTAttention")


def test_dinov3_rope_without_tile_is_the_same_tensor() -> None:
    from export.attention import dinov3_rope

    rope = _tiny_dinov3().model.rope_embeddings
    for shape in [(1, 3, 64, 96), (2, 3, 224, 160)]:
        x = torch.randn(*shape)
        for got, expected in zip(dinov3_rope(rope, x), rope(x), strict=True):
            assert torch.equal(got, expected)


def test_dinov3_rope_tables_rotary_cannot_express_keep_the_models_code(tmp_path: Path) -> None:
    module = _tiny_dinov3()

    def distinct_halves(_: torch.nn.Module, __: Any, tables: tuple[torch.Tensor, ...]) -> Any:
        cos, sin = tables
        return cos, torch.cat((sin[:, :8], sin[:, 8:] * 0.5), dim=-1)

    module.model.rope_embeddings.register_forward_hook(distinct_halves)
    path = tmp_path / "dinov3.onnx"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), fused_attention():
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["out"],
            opset_version=18,
        )
    assert "RotaryEmbedding" not in onnx_op_types(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(
        session.run(None, {"pixel_values": x.numpy()})[0], expected, atol=1e-4, rtol=1e-4
    )
