"""DINOv3's packed attention (engines/families/dinov3/attention.py) against transformers' own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTAttention

from engines.base import LoadRequest, VariantSpec
from engines.families.dinov3.attention import use_packed_attention
from engines.families.dinov3.family import Dinov3Family


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.families.dinov3.tiny import write_tiny

    directory = tmp_path_factory.mktemp("dinov3")
    return directory / write_tiny(directory)["tiny"]


def pixels(batch: int = 2, side: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_float32_is_transformers_bit_for_bit(checkpoint: Path) -> None:
    """Same operations in the same order: every output equal in float32, patches included."""
    reference = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    packed = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    assert use_packed_attention(packed) == packed.config.num_hidden_layers
    assert packed.config.num_register_tokens > 0  # the prefix RoPE skips is really there
    with torch.inference_mode():
        for side in (64, 96):  # the RoPE tables follow the image size
            expected = reference(pixel_values=pixels(side=side))
            ours = packed(pixel_values=pixels(side=side))
            assert torch.equal(ours.last_hidden_state, expected.last_hidden_state)
            assert torch.equal(ours.pooler_output, expected.pooler_output)


def test_bf16_stays_with_transformers_bf16(checkpoint: Path) -> None:
    reference = DINOv3ViTModel.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    packed = DINOv3ViTModel.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    use_packed_attention(packed)
    with torch.inference_mode():
        x = pixels().bfloat16()
        expected = reference(pixel_values=x).last_hidden_state.float()
        ours = packed(pixel_values=x).last_hidden_state.float()
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), expected.flatten(1))
    assert float(cosine.min()) > 0.9999


def test_the_weights_are_kept_once_under_their_names(checkpoint: Path) -> None:
    original = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    packed = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    before = sum(p.numel() for p in packed.parameters())
    use_packed_attention(packed)
    assert sum(p.numel() for p in packed.parameters()) == before
    expected = original.state_dict()
    state = packed.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    attention: Any = packed.model.layer[0].attention
    weight, _ = attention.packed_qkv
    storage = weight.untyped_storage().data_ptr()
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert projection.weight.untyped_storage().data_ptr() == storage  # a view, not a copy


def test_a_trace_runs_the_class_forward(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX export replaces the class's forward while tracing: that one must run."""
    packed = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    use_packed_attention(packed)
    calls: list[int] = []
    own = DINOv3ViTAttention.forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return own(self, *args, **kwargs)

    monkeypatch.setattr(DINOv3ViTAttention, "forward", spy)
    with torch.inference_mode():
        packed(pixel_values=pixels())
    assert calls == []  # served: the packed forward

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = packed

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=x).pooler_output

    torch.jit.trace(Pooled(), pixels(), check_trace=False)
    assert len(calls) == packed.config.num_hidden_layers


def test_the_served_vit_is_packed(checkpoint: Path) -> None:
    spec = VariantSpec("tiny", str(checkpoint))
    pipeline = Dinov3Family().load_torch(LoadRequest(spec, "cpu", "float32", 2))
    module: Any = pipeline.core.module
    layers = [m for m in module.modules() if isinstance(m, DINOv3ViTAttention)]
    assert layers and all(hasattr(m, "packed_qkv") for m in layers)
    reference = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    x = pixels(batch=1)
    served = pipeline.core.run("model", {"pixel_values": x.numpy()})
    with torch.inference_mode():
        expected = reference(pixel_values=x).pooler_output.numpy()
    np.testing.assert_array_equal(served["pooler_output"], expected)


def test_moving_the_model_after_packing_falls_back_to_its_own_code(checkpoint: Path) -> None:
    reference = DINOv3ViTModel.from_pretrained(checkpoint).eval().double()
    packed = DINOv3ViTModel.from_pretrained(checkpoint).eval()
    use_packed_attention(packed)
    packed = packed.double()  # new tensors for every parameter: the pack no longer matches
    with torch.inference_mode():
        x = pixels().double()
        assert torch.equal(
            packed(pixel_values=x).last_hidden_state, reference(pixel_values=x).last_hidden_state
        )
