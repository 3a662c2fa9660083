"""The bf16 CPU attention in query blocks (engines/attention.py) and where the models use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from engines import attention
from engines.attention import NAME, blocked_attention, takes_blocks, use_blocked_attention
from engines.base import LoadRequest, VariantSpec

ASSETS = Path(__file__).resolve().parents[2] / "engines" / "assets"


@contextmanager
def blocked_calls() -> Iterator[list[tuple[int, ...]]]:
    """Record the query shape of every call of the blocked kernel (calls run through)."""
    calls: list[tuple[int, ...]] = []
    original = attention.blocked_attention

    def spy(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(query.shape))
        return original(query, *args, **kwargs)

    attention.blocked_attention = spy  # type: ignore[assignment]
    try:
        yield calls
    finally:
        attention.blocked_attention = original  # type: ignore[assignment]


def qkv(
    shape: tuple[int, ...], keys: int | None = None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    *lead, queries, dim = shape
    kv_shape = (*lead, keys or queries, dim)
    tensors = [
        torch.randn(s, generator=generator, dtype=torch.float64) * 2
        for s in (shape, kv_shape, kv_shape)
    ]
    return tensors[0].to(dtype), tensors[1].to(dtype), tensors[2].to(dtype)


@pytest.mark.parametrize(
    ("shape", "keys"),
    [
        ((1, 6, 201, 64), None),  # DINOv3 ViT-S/16 at 224²: fewer rows than one block
        ((2, 3, 300, 32), None),  # a batch, rows not a multiple of the block
        ((1, 2, 257, 16), 1000),  # cross-attention: more keys than queries
        ((4, 129, 8), 77),  # three-dimensional, one row past a block
    ],
)
def test_blocks_compute_what_sdpa_computes(shape: tuple[int, ...], keys: int | None) -> None:
    q, k, v = qkv(shape, keys)
    expected = F.scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(blocked_attention(q, k, v), expected, rtol=0, atol=1e-12)
    scale = 0.3
    np.testing.assert_allclose(
        blocked_attention(q, k, v, scale),
        F.scaled_dot_product_attention(q, k, v, scale=scale),
        rtol=0,
        atol=1e-12,
    )


def test_blocks_write_into_a_transposed_view() -> None:
    """transformers wants (B, N, heads, dim): the kernel writes there through a view."""
    q, k, v = qkv((2, 3, 150, 16))
    out = torch.empty(2, 150, 3, 16, dtype=torch.float64)
    returned = blocked_attention(q, k, v, out=out.transpose(1, 2))
    assert returned.data_ptr() == out.data_ptr()
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_bf16_blocks_stay_near_float64() -> None:
    """The scores are rounded to bf16 before the softmax (the module docstring's trade)."""
    q, k, v = qkv((1, 6, 700, 64), dtype=torch.bfloat16)
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double())

    def error(out: torch.Tensor) -> float:
        return float((out.double() - reference).norm() / reference.norm())

    blocked = error(blocked_attention(q, k, v))
    flash = error(F.scaled_dot_product_attention(q, k, v))
    assert blocked < 2e-2
    assert flash < blocked  # honest about the trade: SDPA keeps float32 scores


def test_only_bf16_cpu_inference_takes_blocks() -> None:
    q, k, v = qkv((1, 2, 20, 8), dtype=torch.bfloat16)
    assert takes_blocks(q, k, v)
    assert not takes_blocks(q.float(), k.float(), v.float())  # SDPA's flash is faster there
    with torch.enable_grad():
        assert not takes_blocks(q.clone().requires_grad_(), k, v)
    traced: list[bool] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        traced.append(takes_blocks(x, x, x))
        return x * 2

    torch.jit.trace(probe, (q,), check_trace=False)
    assert traced == [False]  # the ONNX exporter's trace keeps SDPA


def test_masked_or_float32_calls_are_sdpa_bit_for_bit() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = False  # as transformers' vision attention layers declare
    q, k, v = qkv((1, 2, 40, 8), dtype=torch.bfloat16)
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool).tril()
    causal = torch.nn.Module()  # no is_causal: SDPA's function treats it as causal
    for owner, args in (
        (module, (q, k, v, mask)),
        (module, (q.float(), k.float(), v.float(), None)),
        (causal, (q, k, v, None)),
    ):
        with blocked_calls() as calls:
            ours, _ = attention._transformers_attention(owner, *args, scaling=0.25)
        expected, _ = sdpa_attention_forward(owner, *args, scaling=0.25)
        assert calls == []
        assert torch.equal(ours, expected)
    with blocked_calls() as calls:
        ours, _ = attention._transformers_attention(module, q, k, v, None, scaling=0.25)
    assert calls == [(1, 2, 40, 8)]
    assert ours.shape == (1, 40, 2, 8) and ours.is_contiguous()


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.families.sam3.tiny import write_tiny

    directory = tmp_path_factory.mktemp("sam3")
    return directory / write_tiny(directory)["tiny"]


def test_switching_sam3_keeps_its_masks(sam3_checkpoint: Path) -> None:
    """Every SDPA config is switched; the text encoder's padding mask still applies."""
    from transformers import AutoTokenizer, Sam3Model

    from engines.families.sam3.tiny import IMAGE_SIZE

    reference = Sam3Model.from_pretrained(sam3_checkpoint).eval()
    switched = Sam3Model.from_pretrained(sam3_checkpoint).eval()
    assert use_blocked_attention(switched) == 8  # model, vision, ViT, text, 4 DETR parts
    assert switched.config.vision_config._attn_implementation == NAME
    assert reference.config.vision_config._attn_implementation == "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(sam3_checkpoint)
    text = tokenizer(["cat", "a red dog"], padding="max_length", max_length=32, return_tensors="pt")
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    batch = pixels.expand(2, -1, -1, -1)
    with torch.inference_mode():
        expected = reference(pixel_values=batch, **text)
        ours = switched(pixel_values=batch, **text)
    for name in ("pred_masks", "pred_boxes", "pred_logits"):
        assert torch.equal(ours[name], expected[name]), name  # float32: SDPA, the same bits
    bf16 = Sam3Model.from_pretrained(sam3_checkpoint, dtype=torch.bfloat16).eval()
    use_blocked_attention(bf16)
    with blocked_calls() as calls, torch.inference_mode():
        bf16(pixel_values=batch.bfloat16(), **text)
    assert calls  # the unmasked attention (ViT windows and global layers) took the blocks


def test_eager_configs_are_left_alone(sam3_checkpoint: Path) -> None:
    from transformers import Sam3Model

    model = Sam3Model.from_pretrained(sam3_checkpoint, attn_implementation="eager")
    assert use_blocked_attention(model) == 0
    assert model.config.vision_config._attn_implementation == "eager"


@pytest.fixture(scope="module")
def depth_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.families.depth_anything.tiny import write_tiny_v2

    return write_tiny_v2(tmp_path_factory.mktemp("depth") / "tiny-v2")


def test_served_v2_depth_uses_blocks_and_channels_last(depth_checkpoint: Path) -> None:
    """The depth family's torch load: bf16 blocks in the backbone, channels-last convolutions.

    The served bf16 depth is as close to float32 as transformers' own bf16 model with SDPA
    (the tiny model's error is the bf16 weights', not the kernel's).
    """
    from transformers import DepthAnythingForDepthEstimation

    from engines.families.depth_anything.family import DepthAnythingFamily
    from engines.families.depth_anything.options import DepthAnythingOptions

    family = DepthAnythingFamily()
    spec = VariantSpec("tiny-v2", str(depth_checkpoint))
    pipeline = family.load_torch(LoadRequest(spec, "cpu", "bfloat16", 2))
    module = pipeline.core.module
    convolutions = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions), (
        "channels-last on CPU"
    )
    assert module.backbone.config._attn_implementation == NAME
    image = Image.open(ASSETS / "chelsea.jpg").convert("RGB")
    pixels = torch.from_numpy(
        pipeline.prepare(image, DepthAnythingOptions()).arrays["pixel_values"]
    )[None]
    float32 = DepthAnythingForDepthEstimation.from_pretrained(depth_checkpoint).eval()
    sdpa_bf16 = DepthAnythingForDepthEstimation.from_pretrained(
        depth_checkpoint, dtype=torch.bfloat16
    ).eval()
    with torch.inference_mode(), blocked_calls() as calls:
        reference = float32(pixel_values=pixels).predicted_depth.double()
        plain = sdpa_bf16(pixel_values=pixels.bfloat16()).predicted_depth.double()
        served = pipeline.core.run("model", {"pixel_values": pixels.numpy()})["depth"]
    assert len(calls) == 4  # one per backbone layer
    served_error = float(
        (torch.from_numpy(served).double().reshape(reference.shape) - reference).norm()
        / reference.norm()
    )
    plain_error = float((plain - reference).norm() / reference.norm())
    assert served_error <= 1.5 * plain_error + 1e-4


def test_served_dinov3_and_da3_take_blocks_in_bf16(tmp_path: Path) -> None:
    """DINOv3 (transformers) and our DA3 port run their attention in blocks in bf16 on CPU."""
    from engines.families.depth_anything.family import DepthAnythingFamily
    from engines.families.depth_anything.tiny import write_tiny as write_depth
    from engines.families.dinov3.family import Dinov3Family
    from engines.families.dinov3.tiny import write_tiny as write_dinov3

    dinov3 = tmp_path / write_dinov3(tmp_path)["tiny"]
    spec = VariantSpec("tiny", str(dinov3))
    pipeline = Dinov3Family().load_torch(LoadRequest(spec, "cpu", "bfloat16", 2))
    layers = pipeline.core.module.config.num_hidden_layers
    pixels = np.zeros((1, 3, 64, 64), np.float32)
    with blocked_calls() as calls:
        pipeline.core.run("model", {"pixel_values": pixels})
    assert len(calls) == layers

    da3 = tmp_path / write_depth(tmp_path)["tiny"]
    request = LoadRequest(VariantSpec("tiny", str(da3)), "cpu", "bfloat16", 2)
    pipeline = DepthAnythingFamily().load_torch(request)
    convolutions = [m for m in pipeline.core.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    with blocked_calls() as calls:
        pipeline.core.run("model", {"pixel_values": np.zeros((1, 3, 56, 56), np.float32)})
    assert calls
