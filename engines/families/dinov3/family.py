"""DINOv3's variants and how to load them (transformers' ViT and ConvNeXt models)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.base import Family, LoadRequest, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.families.dinov3.compare import embedding_metrics
from engines.families.dinov3.options import Dinov3Options
from engines.families.dinov3.pipeline import Dinov3Pipeline, pipeline_for

LICENSE = "DINOv3 License (gated)"
HUB = "facebook/dinov3-{}-pretrain-{}"
VARIANTS = {
    **{
        name: VariantSpec(name, HUB.format(name, "lvd1689m"), LICENSE)
        for name in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16")
    },
    **{
        f"convnext-{size}": VariantSpec(
            f"convnext-{size}", HUB.format(f"convnext-{size}", "lvd1689m"), LICENSE
        )
        for size in ("tiny", "small", "base", "large")
    },
    **{
        f"{name}-sat": VariantSpec(f"{name}-sat", HUB.format(name, "sat493m"), LICENSE)
        for name in ("vitl16", "vit7b16")
    },
}


class Dinov3Family(Family):
    """DINOv3 ViT and ConvNeXt checkpoints through transformers."""

    name = "dinov3"
    default_variant = "vits16"
    variants = VARIANTS
    options_type = Dinov3Options
    # bf16 weights on a CPU with bf16 matrix units: measured embedding cosine 0.99992 to fp32.
    precision_gates = {"embedding_cosine_min": (">=", 0.999)}

    def precision_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Smallest embedding cosine similarity of the two runs."""
        return embedding_metrics(reference, candidate)

    def load_torch(self, request: LoadRequest) -> Dinov3Pipeline:
        """Load with transformers' ``DINOv3ViTModel`` / ``DINOv3ConvNextModel``."""
        import torch
        from transformers import AutoConfig, DINOv3ConvNextModel, DINOv3ViTModel

        from engines.attention import use_blocked_attention
        from engines.families.dinov3.attention import use_packed_attention
        from engines.torch_runtime import DTYPES, TorchCore, torch_checkpoint

        path = torch_checkpoint(request, ["*.json", "*.safetensors"])
        config = AutoConfig.from_pretrained(path)
        convnext = config.model_type == "dinov3_convnext"
        cls = DINOv3ConvNextModel if convnext else DINOv3ViTModel
        kwargs: dict[str, Any] = {"dtype": DTYPES[request.dtype]}
        if not convnext:
            kwargs["attn_implementation"] = "sdpa"
        model = cls.from_pretrained(path, **kwargs)
        # transformers wraps ``to`` with functools.wraps, which mypy reads as unbound.
        model = model.to(request.device).eval()  # type: ignore[arg-type]
        use_blocked_attention(model)  # bf16 on CPU: the attention in query blocks
        use_packed_attention(model)  # one q/k/v projection, RoPE in one pass (ViT only)

        def run_model(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            out = model(pixel_values=pixel_values)
            return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}

        core = TorchCore(model, {"model": run_model}, request.device, request.dtype)
        return pipeline_for(core, path, config, uint8_resize=request.uint8_resize)

    def load_onnx(self, request: LoadRequest, core: Any) -> Dinov3Pipeline:
        """The pipeline around exported graphs; the checkpoint gives config and pre-processing."""
        from transformers import AutoConfig

        path = resolve_checkpoint(request.spec.source, request.hf_token, allow_patterns=["*.json"])
        config = AutoConfig.from_pretrained(path)
        return pipeline_for(core, path, config, uint8_resize=request.uint8_resize)
