"""The GroundingDINO family: its variants and how to load one on torch or from ONNX."""

from __future__ import annotations

import functools
from typing import Any

from engines.base import Family, LoadRequest, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.families.grounding_dino.images import load_preprocessing
from engines.families.grounding_dino.options import GroundingDinoOptions
from engines.families.grounding_dino.pipeline import GroundingDinoPipeline
from engines.families.grounding_dino.text import encode_prompts

MM_LICENSE = "Apache-2.0 (MMDetection; see model card)"
MM_HUB = "openmmlab-community/mm_grounding_dino_{}"
VARIANTS = {
    "tiny": VariantSpec("tiny", "IDEA-Research/grounding-dino-tiny", "Apache-2.0"),
    "base": VariantSpec("base", "IDEA-Research/grounding-dino-base", "Apache-2.0"),
    **{
        f"mm-{name.replace('_', '-')}": VariantSpec(
            f"mm-{name.replace('_', '-')}", MM_HUB.format(name), MM_LICENSE
        )
        for name in (
            "tiny_o365v1_goldg",
            "tiny_o365v1_goldg_grit",
            "tiny_o365v1_goldg_v3det",
            "tiny_o365v1_goldg_grit_v3det",
            "base_o365v1_goldg_v3det",
            "base_all",
            "large_o365v2_oiv6_goldg",
            "large_all",
        )
    },
}


class GroundingDinoFamily(Family):
    """GroundingDINO (IDEA-Research) and MM-GroundingDINO (OpenMMLab) through transformers."""

    name = "grounding-dino"
    aliases = ("grounding_dino",)
    default_variant = "tiny"
    variants = VARIANTS
    options_type = GroundingDinoOptions
    # On CPU a batch costs more per image than single forwards (padding to the largest image,
    # and the fusion layers' cost grows with it): one image per forward there.
    max_batch_size = {"cpu": 1, "cuda": 8}
    # No bf16 check on CPU (float32 always): torch 2.13's bf16 CPU path of the deformable
    # attention's grid sampling read out of bounds and killed the server process (SIGSEGV in
    # libtorch_cpu) on the full-size model, and bf16 ran slower than float32 there anyway
    # (11.0 vs 8.5 s per 800x1202 image on the 2-core AVX-512 BF16 machine, 2026-12-06). With
    # the gathered attention (no grid sampling) it no longer crashes, but it is still slower
    # (16-18 vs 13-14 s for two photos) and its scores are NaN (2026-12-07, RESULTS.md).

    def check_options(
        self, spec: VariantSpec, hf_token: str | None, options: GroundingDinoOptions
    ) -> None:
        """The prompts fit the checkpoint's text length (its tokenizer, not the model)."""
        tokenizer, max_text_len = checkpoint_tokenizer(spec.source, hf_token)
        encode_prompts(options.prompts, tokenizer, max_text_len)

    def load_torch(self, request: LoadRequest) -> GroundingDinoPipeline:
        """Load with ``AutoModelForZeroShotObjectDetection`` and the checkpoint's tokenizer.

        That resolves ``GroundingDinoForObjectDetection`` or, for MM-GroundingDINO
        checkpoints, ``MMGroundingDinoForObjectDetection``; both take and return the same.
        """
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoTokenizer

        from engines.families.grounding_dino.deformable import use_gathered_attention
        from engines.families.grounding_dino.feedforward import use_blocked_feedforward
        from engines.torch_runtime import DTYPES, TorchCore, torch_checkpoint

        path = torch_checkpoint(request, ["*.json", "*.safetensors", "*.txt"])
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            path, dtype=DTYPES[request.dtype]
        )
        model = model.to(request.device).eval()
        use_gathered_attention(model)  # on CPU: see each module
        use_blocked_feedforward(model)
        tokenizer = AutoTokenizer.from_pretrained(path)

        def run_model(
            pixel_values: torch.Tensor,
            pixel_mask: torch.Tensor,
            input_ids: torch.Tensor,
            token_type_ids: torch.Tensor,
            attention_mask: torch.Tensor,
        ) -> dict[str, torch.Tensor]:
            out = model(
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
                input_ids=input_ids,
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
            )
            # logits are padded with -inf to max_text_len: keep the caption's tokens only.
            return {
                "logits": out.logits[..., : input_ids.shape[1]],
                "pred_boxes": out.pred_boxes,
                "reference_points": out.init_reference_points,
            }

        core = TorchCore(model, {"model": run_model}, request.device, request.dtype)
        return GroundingDinoPipeline(
            core,
            load_preprocessing(path),
            tokenizer,
            int(model.config.max_text_len),
            pad_batches=request.device.startswith("cuda"),
            checkpoint_dir=path,
        )

    def load_onnx(self, request: LoadRequest, core: Any) -> GroundingDinoPipeline:
        """The pipeline around the exported ``model`` graph; batching as on torch."""
        from transformers import AutoConfig, AutoTokenizer

        path = resolve_checkpoint(
            request.spec.source, request.hf_token, allow_patterns=["*.json", "*.txt"]
        )
        return GroundingDinoPipeline(
            core,
            load_preprocessing(path),
            AutoTokenizer.from_pretrained(path),
            int(AutoConfig.from_pretrained(path).max_text_len),
            pad_batches=request.device.startswith("cuda"),
            checkpoint_dir=path,
        )


@functools.lru_cache(maxsize=8)
def checkpoint_tokenizer(source: str, hf_token: str | None) -> tuple[Any, int]:
    """A checkpoint's tokenizer and text length, read once (no weights are read)."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_checkpoint(source, hf_token, allow_patterns=["*.json", "*.txt"])
    return AutoTokenizer.from_pretrained(path), int(AutoConfig.from_pretrained(path).max_text_len)
