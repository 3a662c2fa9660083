"""The GroundingDINO pipeline: prompts and pixels in, named boxes out, on any runtime.

Pre-processing (:mod:`.images`), prompts (:mod:`.text`) and post-processing
(:mod:`.detections`) live next to this module and are shared by every runtime; the core runs one
graph ``model``: pixel_values, pixel_mask, input_ids, token_type_ids, attention_mask → logits
(B, Q, T), pred_boxes (B, Q, 4) and reference_points (B, Q, 4), the top-k encoder proposals the
Q queries start from (which identify the queries when two runs are compared; post-processing
does not read them). The Swin backbone (``model.model.backbone``) sees only pixels and is where
an export could split the graph, but it is ~14 % of the time at 800²; the text-conditioned
encoder/decoder is the rest.

Batching, chosen by measurement: on CUDA, images of any size share a forward, padded
bottom/right to the largest with a pixel mask exactly as the reference processor batches them
(tested against it); on CPU they are grouped by resized shape (the default ``batch_key``) and
never padded. On an H200 with the full-size Swin-T config, four images of mixed sizes (around
800×1066) took 296 ms as four forwards and 214 ms padded into one in float32, 261 vs 160 ms in
float16 (same-shape batches: 289 vs 187 ms, 252 vs 136 ms). On 2 CPU cores a batch costs more
per image than single forwards, and padding would make an image's detections depend on the
other images of its request (the Swin backbone sees the padded border), so there the results
equal single-image requests exactly. ``pad_batches`` overrides the choice per pipeline.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engines.base import Pipeline, Prepared
from engines.families.grounding_dino.detections import detections
from engines.families.grounding_dino.images import Preprocessing, pad_batch
from engines.families.grounding_dino.options import GroundingDinoOptions
from engines.families.grounding_dino.text import Caption, encode_prompts
from engines.visualize import draw_boxes, encode_png, requested


@dataclass
class PaddedPrepared(Prepared):
    """A prepared image that may share a forward with images of any size (padded)."""

    @property
    def batch_key(self) -> Hashable:
        """One key for all: the forward pads to the largest image."""
        return "grounding-dino"


class GroundingDinoPipeline(Pipeline[GroundingDinoOptions]):
    """GroundingDINO around a core with one graph ``model``.

    Args:
        core: The runtime core.
        preprocessing: The checkpoint's image recipe.
        tokenizer: The checkpoint's (BERT) tokenizer.
        max_text_len: Most text tokens the model reads.
        pad_batches: Let images of different sizes share a forward by padding.
        checkpoint_dir: Where the checkpoint lives.
    """

    def __init__(
        self,
        core: Any,
        preprocessing: Preprocessing,
        tokenizer: Any,
        max_text_len: int,
        *,
        pad_batches: bool = False,
        checkpoint_dir: Path | None = None,
    ) -> None:
        super().__init__(core, checkpoint_dir)
        self.preprocessing = preprocessing
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.pad_batches = pad_batches
        # One tokenisation per prompt list: every image of a request shares it. The lock makes
        # the images prepared in parallel wait for the first one (and keeps the Rust tokenizer,
        # which is not safe to call from several threads at once, to one caller).
        self._encode = functools.lru_cache(maxsize=64)(self._encode_uncached)
        self._encode_lock = threading.Lock()

    def _encode_uncached(self, prompts: tuple[str, ...]) -> Caption:
        return encode_prompts(prompts, self.tokenizer, self.max_text_len)

    def caption(self, prompts: Sequence[str]) -> Caption:
        """The model's text for ``prompts`` (cached).

        Raises:
            InvalidInputError: Empty prompts or too many tokens.
        """
        key = tuple(prompts)
        with self._encode_lock:
            return self._encode(key)

    def prepare(self, image: Image.Image, options: GroundingDinoOptions) -> Prepared:
        """Resize, rescale and normalise one image; attach the request's caption."""
        caption = self.caption(options.prompts)
        pixels = self.preprocessing(image)
        cls = PaddedPrepared if self.pad_batches else Prepared
        extra: dict[str, Any] = {"caption": caption}
        if requested(options):
            extra["image"] = image
        return cls({"pixel_values": pixels}, image.width, image.height, extra)

    def forward(
        self, batch: Sequence[Prepared], options: GroundingDinoOptions
    ) -> list[dict[str, np.ndarray]]:
        """One forward for the batch (padded to its largest image if sizes differ)."""
        caption: Caption = batch[0].extra["caption"]
        pixel_values, pixel_mask = pad_batch([p.arrays["pixel_values"] for p in batch])
        inputs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        inputs.update(caption.arrays(len(batch)))
        out = self.core.run("model", inputs)
        return [
            {name: out[name][i] for name in ("logits", "pred_boxes", "reference_points")}
            for i in range(len(batch))
        ]

    def postprocess(
        self, raw: dict[str, np.ndarray], prepared: Prepared, options: GroundingDinoOptions
    ) -> dict[str, Any]:
        """Threshold, label with whole prompts, scale boxes to input pixels."""
        found = detections(
            raw["logits"],
            raw["pred_boxes"],
            prepared.extra["caption"],
            prepared.width,
            prepared.height,
            options.box_threshold,
            options.text_threshold,
        )
        result = {"width": prepared.width, "height": prepared.height, "detections": found}
        if requested(options):
            boxes = [(d["box"], f"{d['label']} {d['score']:.2f}", d["prompt_index"]) for d in found]
            result["visualization"] = encode_png(draw_boxes(prepared.extra["image"], boxes))
        # Export parity only (its options type adds ``keep_raw``): the queries themselves.
        if getattr(options, "keep_raw", False):
            result["raw"] = raw
        return result

    def warmup(self) -> None:
        """One forward on a blank image."""
        options = GroundingDinoOptions(prompts=["object"])
        self.forward([self.prepare(Image.new("RGB", (64, 48)), options)], options)
