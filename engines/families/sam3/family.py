"""SAM3's family: the released checkpoint, and loading it on torch or from exported graphs."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.base import Core, Family, LoadRequest, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.families.sam3.compare import precision_metrics
from engines.families.sam3.options import Sam3Options
from engines.families.sam3.pipeline import (
    IMAGES_PER_CALL,
    Preprocessing,
    PromptTokenizer,
    Sam3Pipeline,
)

LICENSE = "SAM License (gated)"
VARIANTS = {"sam3": VariantSpec("sam3", "facebook/sam3", LICENSE)}
# The embedding cache's budget when the settings leave it to the device (MiB). Either holds
# ~19 embeddings of 1008² images in the device's default dtype (106 MiB float32 on CPU, 53 MiB
# float16 on CUDA); host RAM is the cheaper of the two and each hit saves ~37 s of CPU.
CACHE_MB = {"cpu": 2048.0, "cuda": 1024.0}


def detector_config(path: Path) -> Any:
    """The detector's ``Sam3Config`` of a checkpoint (also inside a ``sam3_video`` config)."""
    from transformers import AutoConfig, Sam3Config

    config = AutoConfig.from_pretrained(path)
    nested = getattr(config, "detector_config", None)
    if nested is not None:
        return Sam3Config(**nested) if isinstance(nested, dict) else nested
    return config


def cache_budget_bytes(request: LoadRequest) -> int:
    """The embedding cache's budget: the request's, or the device's default."""
    budget_mb = request.image_cache_mb
    if budget_mb is None:
        budget_mb = CACHE_MB["cpu" if request.device.startswith("cpu") else "cuda"]
    return int(budget_mb * 2**20)


class Sam3Family(Family):
    """SAM3's image detector (``Sam3Model``, text prompts) through transformers."""

    name = "sam3"
    default_variant = "sam3"
    variants = VARIANTS
    graphs = ("vision", "text", "decoder")
    options_type = Sam3Options
    accepts_image_ids = True
    # bf16 against fp32: instances scoring >= 0.5 in either run found in the other (box IoU
    # >= 0.5), their scores within 0.05, boxes within 2 % of the longer side, masks IoU >= 0.9;
    # each prompt's top score within 0.05. One photo: a check run is a whole vision encoder on
    # CPU (~15-30 s at full size).
    precision_gates = {
        "sure_matched_fraction": (">=", 1.0),
        "scores_max_abs_diff": ("<=", 0.05),
        "boxes_max_abs_diff_rel": ("<=", 0.02),
        "mask_iou_min": (">=", 0.9),
        "top_score_abs_diff_max": ("<=", 0.05),
    }
    precision_photos = ("chelsea.jpg",)

    def precision_options(self) -> Sam3Options:
        """Two prompts, every query kept (see :mod:`.compare`)."""
        return Sam3Options(prompts=["cat", "a person"], threshold=0.0, output_format="rle")

    def precision_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Confident instances matched by box; their worst score, box and mask drift."""
        return precision_metrics(reference, candidate)

    def check_options(self, spec: VariantSpec, hf_token: str | None, options: Any) -> None:
        """Every prompt fits the text encoder (the checkpoint's tokenizer, not the model)."""
        if isinstance(options, Sam3Options):  # embed requests have no prompts
            checkpoint_tokenizer(spec.source, hf_token)(options.prompts)

    def load_torch(self, request: LoadRequest) -> Sam3Pipeline:
        """Load ``Sam3Model`` and the checkpoint's tokenizer; split into three graphs."""
        from transformers import AutoTokenizer, Sam3Model

        from engines.attention import use_blocked_attention
        from engines.families.sam3.graphs import torch_graphs
        from engines.torch_runtime import DTYPES, TorchCore, torch_checkpoint

        path = torch_checkpoint(request, ["*.json", "*.safetensors", "*.txt"])
        model: Any = Sam3Model.from_pretrained(path, dtype=DTYPES[request.dtype])
        model = model.to(request.device).eval()
        use_blocked_attention(model)  # bf16 on CPU: unmasked attention in query blocks
        config = model.config  # the detector's config, also when the file is a video config
        levels = len(config.vision_config.scale_factors) - 1
        tokenizer = PromptTokenizer(
            AutoTokenizer.from_pretrained(path), config.text_config.max_position_embeddings
        )
        core = TorchCore(model, torch_graphs(model, levels), request.device, request.dtype)
        return Sam3Pipeline(
            core,
            Preprocessing.load(path),
            tokenizer,
            levels=levels,
            # float64 exists only as the export parity reference: one image per vision call
            # there, since a 1008² image's global attention alone is ~3.4 GB in float64.
            images_per_call=1 if request.dtype == "float64" else IMAGES_PER_CALL,
            warmup_vision=not request.device.startswith("cpu"),
            checkpoint_dir=path,
            variant=request.spec.name,
            cache_budget_bytes=cache_budget_bytes(request),
            cache_ttl_s=request.image_cache_ttl_s,
        )

    def load_onnx(self, request: LoadRequest, core: Core) -> Sam3Pipeline:
        """The pipeline around exported graphs (or a hybrid core): same steps as on torch.

        The image is encoded once by ``vision`` and its embedding is decoded against every
        prompt by ``decoder``, exactly as :meth:`load_torch`'s pipeline does.
        """
        from transformers import AutoTokenizer

        path = resolve_checkpoint(
            request.spec.source, request.hf_token, allow_patterns=["*.json", "*.txt"]
        )
        config = detector_config(path)
        tokenizer = PromptTokenizer(
            AutoTokenizer.from_pretrained(path), config.text_config.max_position_embeddings
        )
        on_cpu = request.device.startswith("cpu")
        return Sam3Pipeline(
            core,
            Preprocessing.load(path),
            tokenizer,
            levels=len(config.vision_config.scale_factors) - 1,
            # Exported without the fused attention (``--no-optimize``), ONNX Runtime's CPU
            # provider materialises every global attention matrix (heads × 5184² floats,
            # ~1.7 GB per 1008² image, and as much for its softmax) and its arena keeps the
            # peak; with it, activations are still ~GBs per image. One image per vision call
            # bounds that at no cost in throughput (the CPU is saturated by one image).
            images_per_call=1 if on_cpu else IMAGES_PER_CALL,
            warmup_vision=not on_cpu,
            checkpoint_dir=path,
            variant=request.spec.name,
            cache_budget_bytes=cache_budget_bytes(request),
            cache_ttl_s=request.image_cache_ttl_s,
        )


@functools.lru_cache(maxsize=8)
def checkpoint_tokenizer(source: str, hf_token: str | None) -> PromptTokenizer:
    """A checkpoint's prompt tokenizer, read once (no weights are read)."""
    from transformers import AutoTokenizer

    path = resolve_checkpoint(source, hf_token, allow_patterns=["*.json", "*.txt"])
    max_length = detector_config(path).text_config.max_position_embeddings
    return PromptTokenizer(AutoTokenizer.from_pretrained(path), max_length)
