"""SAM3's three torch graphs over one ``Sam3Model`` (contract: ``pipeline.Sam3Pipeline``).

``Sam3Model.forward`` takes pre-computed inputs as transformers objects: ``vision_embeds`` a
``Sam3VisionEncoderOutput`` whose ``fpn_hidden_states`` / ``fpn_position_encoding`` it slices
with ``[:-1]``, and ``text_embeds`` an object whose ``pooler_output`` holds the projected text
features (what ``get_text_features`` returns), next to ``attention_mask``. The graphs rebuild
those objects from plain tensors so the core's boundary stays named arrays, and the same
functions can be exported to ONNX graph by graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from engines.families.sam3.pipeline import vision_output_names


def torch_graphs(model: Any, levels: int) -> dict[str, Callable[..., Mapping[str, torch.Tensor]]]:
    """Build the ``vision``, ``text`` and ``decoder`` graphs of ``model`` (a ``Sam3Model``).

    Args:
        model: The loaded detector.
        levels: FPN levels the detector reads (all but the coarsest).

    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    names = vision_output_names(levels)
    hidden_names, position_names = names[:levels], names[levels:]

    def vision(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model.get_vision_features(pixel_values=pixel_values)
        used = list(out.fpn_hidden_states[:levels]) + list(out.fpn_position_encoding[:levels])
        return dict(zip(names, used, strict=True))

    def text(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return {"text_features": out.pooler_output}

    def decoder(
        text_features: torch.Tensor, attention_mask: torch.Tensor, **vision_embeds: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        prompts = text_features.shape[0]
        # A batch-1 embedding is broadcast to one row per prompt without copying it.
        hidden = tuple(_rows(vision_embeds[n], prompts) for n in hidden_names)
        positions = tuple(_rows(vision_embeds[n], prompts) for n in position_names)
        embeds = Sam3VisionEncoderOutput(
            # forward() drops the last level ([:-1]): the coarsest one, which it never reads.
            fpn_hidden_states=(*hidden, None),  # type: ignore[arg-type]
            fpn_position_encoding=(*positions, None),  # type: ignore[arg-type]
        )
        out = model(
            vision_embeds=embeds,
            text_embeds=BaseModelOutputWithPooling(pooler_output=text_features),
            attention_mask=attention_mask,
        )
        return {
            "pred_masks": out.pred_masks,
            "pred_boxes": out.pred_boxes,
            "pred_logits": out.pred_logits,
            "presence_logits": out.presence_logits,
        }

    return {"vision": vision, "text": text, "decoder": decoder}


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] != 1:
        raise ValueError(
            f"An image embedding of batch {tensor.shape[0]} cannot serve {rows} prompts"
        )
    return tensor.expand(rows, *tensor.shape[1:])
