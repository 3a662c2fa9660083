"""SAM3's pipeline: fixed-size pre-processing, prompt tokens, encode once, decode per prompt.

The core has three graphs, ``vision`` (pixel_values → the FPN levels the detector reads),
``text`` (token ids → projected text features) and ``decoder`` (one row per prompt: image
levels + text features → masks, boxes, logits, presence), so work grows with prompts only by
the decoder's cost, and an image-embedding cache sits between :meth:`Sam3Pipeline.encode_images`
and :meth:`Sam3Pipeline.decode`: an image seen before (same decoded pixels, same variant) or
named by its ``image_id`` skips the vision encoder (``embeddings.py``). The cache holds the
embeddings where the core computed them (the GPU), bounded by bytes, least recently used out
first, each dropped ``cache_ttl_s`` after its last use.

Pre-processing follows the checkpoint's ``preprocessor_config.json`` (released: 1008×1008
without keeping the aspect ratio, 1/255, mean = std = 0.5). Post-processing is transformers'
``Sam3ImageProcessor.post_process_instance_segmentation``: score = sigmoid(logit) ·
sigmoid(presence), kept when above ``threshold``; mask probabilities (sigmoid) resized
bilinearly to the input size, then ``> mask_threshold``; no NMS. Boxes are the model's xyxy
scaled to input pixels, unclipped, as the reference gives them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engines.base import Arrays, CacheStats, ImageHandle, Pipeline, Prepared, to_host
from engines.cache import LruCache
from engines.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from engines.families.sam3.embeddings import Embedding, image_id, owned
from engines.families.sam3.options import Sam3EmbedOptions, Sam3Options
from engines.images import released_preprocessing, resize_normalize
from engines.masks import encode_mask
from engines.visualize import MaskOverlay, encode_png, requested

# The released recipe (Sam3ImageProcessor's defaults), for keys a config file lacks.
DEFAULT_PREPROCESSING = released_preprocessing(
    {"height": 1008, "width": 1008}, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
)
# Decoder rows per call: bounds memory (each row holds Q full-size mask logits and the pixel
# decoder's activations) while still batching prompts.
PROMPTS_PER_CALL = 8
# Images per vision-encoder call: the ViT's activations are ~1 GB per 1008² image.
IMAGES_PER_CALL = 4


@dataclass(frozen=True)
class Preprocessing:
    """Fixed-size resize, rescale and normalise, as the checkpoint prescribes."""

    size: tuple[int, int]
    resample: int
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessing:
        """Read a ``preprocessor_config.json`` dict (missing keys take the released values)."""
        merged = {**DEFAULT_PREPROCESSING, **config}
        size = merged["size"] or DEFAULT_PREPROCESSING["size"]
        normalize = merged.get("do_normalize", True)
        return cls(
            size=(int(size["height"]), int(size["width"])),
            resample=int(merged.get("resample") or 2),
            rescale_factor=float(merged["rescale_factor"]) if merged.get("do_rescale") else None,
            mean=tuple(merged["image_mean"]) if normalize else None,
            std=tuple(merged["image_std"]) if normalize else None,
        )

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        """Read the checkpoint's image-processor settings; the released recipe if it has none.

        They are in ``preprocessor_config.json``, or under ``image_processor`` in the single
        ``processor_config.json`` that newer processors save.
        """
        file = path / "preprocessor_config.json"
        if file.exists():
            return cls.from_config(json.loads(file.read_text()))
        combined = path / "processor_config.json"
        if combined.exists():
            return cls.from_config(json.loads(combined.read_text()).get("image_processor", {}))
        return cls.from_config({})

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Pre-process an RGB image into a (3, H, W) float32 array.

        The 8-bit pixels are resized, then rescaled and normalised: the order of
        ``Sam3ImageProcessor`` (torchvision's resize of the uint8 image), whose pixels this gives.
        """
        mode = "bicubic" if self.resample == 3 else "bilinear"
        return resize_normalize(
            image, self.size, mode, self.rescale_factor, self.mean, self.std, uint8=True
        )


@dataclass(frozen=True)
class Tokens:
    """A request's prompts tokenised and padded to the text encoder's length: (P, L) each."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class PromptTokenizer:
    """The checkpoint's CLIP tokenizer, padding to ``max_length`` and refusing to truncate.

    Args:
        tokenizer: A transformers tokenizer.
        max_length: Tokens the text encoder reads (its position embeddings), with BOS/EOS.

    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._cached = lru_cache(maxsize=256)(self._tokenize)
        # Images of one request are prepared on several threads; one of them tokenises.
        self._lock = threading.Lock()

    def __call__(self, prompts: Sequence[str]) -> Tokens:
        """Tokenise ``prompts`` (cached: every image of a request shares one result).

        Raises:
            InvalidInputError: No prompts, a blank prompt, or one longer than ``max_length``.

        """
        with self._lock:
            return self._cached(tuple(prompts))

    def _tokenize(self, prompts: tuple[str, ...]) -> Tokens:
        if not prompts:
            raise InvalidInputError("At least one prompt is required.")
        for index, prompt in enumerate(prompts):
            if not prompt.strip():
                raise InvalidInputError(f"Prompt {index} is empty; give a short noun phrase.")
        sequences = self.tokenizer(list(prompts))["input_ids"]
        input_ids = np.full((len(prompts), self.max_length), self.pad_token_id, np.int64)
        attention_mask = np.zeros((len(prompts), self.max_length), np.int64)
        for index, (prompt, ids) in enumerate(zip(prompts, sequences, strict=True)):
            if len(ids) > self.max_length:
                raise InvalidInputError(
                    f"Prompt {index} ({prompt!r}) is {len(ids)} tokens long; SAM3 reads at most "
                    f"{self.max_length} (start and end tokens included). Shorten it."
                )
            # Padding on the right, as Sam3Processor's padding="max_length" does.
            input_ids[index, : len(ids)] = ids
            attention_mask[index, : len(ids)] = 1
        return Tokens(input_ids, attention_mask)


@dataclass
class Detections:
    """One image's kept queries over all prompts (K of them), before resizing masks.

    Attributes:
        prompt_index: (K,) index of the prompt each instance answers.
        scores: (K,) sigmoid(logit) · sigmoid(presence).
        boxes: (K, 4) xyxy in [0, 1] of the network input.
        mask_logits: (K, h, w) mask logits at the decoder's resolution.

    """

    prompt_index: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    mask_logits: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """Join detections of several prompt chunks."""
        return cls(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("prompt_index", "scores", "boxes", "mask_logits")
            )
        )


class Sam3Pipeline(Pipeline[Sam3Options]):
    """SAM3 around a core with graphs ``vision``, ``text`` and ``decoder``.

    Graph contract (numpy in and out, floats float32 at the boundary):

    - ``vision``: ``pixel_values`` (B, 3, H, W) → ``fpn_hidden_states_{i}`` and
      ``fpn_position_encoding_{i}`` (B, C, h_i, w_i) for the ``levels`` FPN levels the
      detector reads (the coarsest FPN output is not used by SAM3 and not returned).
    - ``text``: ``input_ids``, ``attention_mask`` (P, L) int64 → ``text_features`` (P, L, C).
    - ``decoder``: the vision outputs of one image with batch P, or batch 1 (broadcast to P),
      plus ``text_features`` and ``attention_mask`` → ``pred_masks`` (P, Q, h, w) logits,
      ``pred_boxes`` (P, Q, 4) xyxy in [0, 1], ``pred_logits`` (P, Q), ``presence_logits``
      (P, 1).

    With :class:`Sam3EmbedOptions` a run only encodes (or finds) each image's embedding and
    answers its ``image_id``; an :class:`ImageHandle` in place of an image is resolved from the
    cache. ``cache_budget_bytes=0`` (the default) keeps no embeddings.
    """

    def __init__(
        self,
        core: Any,
        preprocessing: Preprocessing,
        tokenizer: PromptTokenizer,
        *,
        levels: int,
        prompts_per_call: int = PROMPTS_PER_CALL,
        images_per_call: int = IMAGES_PER_CALL,
        warmup_vision: bool = True,
        checkpoint_dir: Path | None = None,
        variant: str = "",
        cache_budget_bytes: int = 0,
        cache_ttl_s: float = 600.0,
    ) -> None:
        super().__init__(core, checkpoint_dir)
        self.preprocessing = preprocessing
        self.tokenizer = tokenizer
        self.vision_names = vision_output_names(levels)
        self.hidden_names = self.vision_names[:levels]
        self.position_names = self.vision_names[levels:]
        self.prompts_per_call = prompts_per_call
        self.images_per_call = images_per_call
        self.warmup_vision = warmup_vision
        self.variant = variant
        self.cache: LruCache[str, Embedding] = LruCache(cache_budget_bytes, cache_ttl_s)
        # The position encodings every embedding shares (see embeddings.py), once computed.
        self._positions: dict[str, Any] | None = None

    # -- the Pipeline contract -------------------------------------------------------------
    def prepare(
        self, image: Image.Image | ImageHandle, options: Sam3Options | Sam3EmbedOptions
    ) -> Prepared:
        """Tokenise the prompts (once per request); find the image's embedding or pre-process it.

        A cached embedding (same pixels, or the handle's id) goes into ``extra["embedding"]``
        and the image needs no pixels; otherwise ``arrays["pixel_values"]`` is the image
        pre-processed for the vision encoder.

        Raises:
            InvalidInputError: A prompt is too long for the checkpoint's text encoder (or blank).
            NotFoundError: An image handle whose embedding is not (or no longer) in the cache.

        """
        extra: dict[str, Any] = {}
        if not isinstance(options, Sam3EmbedOptions):
            extra["tokens"] = self.tokenizer(options.prompts)
            if requested(options):
                if isinstance(image, ImageHandle):
                    raise InvalidInputError(
                        "visualize draws over the image, and an image_id carries no pixels: "
                        "send the image itself, or leave visualize off."
                    )
                extra["image"] = image
        if isinstance(image, ImageHandle):
            embedding = self.cache.get(image.image_id)
            if embedding is None:
                raise NotFoundError(
                    f"image_id {image.image_id!r} is not in the cache (evicted or never "
                    "embedded); send the image again or POST /inference/sam3/embed."
                )
            extra.update(image_id=image.image_id, embedding=embedding)
            return Prepared({}, embedding.width, embedding.height, extra)
        if self.cache.budget_bytes or isinstance(options, Sam3EmbedOptions):
            extra["image_id"] = image_id(image, self.variant)
            embedding = self.cache.get(extra["image_id"])
            if embedding is not None:
                extra["embedding"] = embedding
                return Prepared({}, image.width, image.height, extra)
        pixels = self.preprocessing(image)
        return Prepared({"pixel_values": pixels}, image.width, image.height, extra)

    def forward(
        self, batch: Sequence[Prepared], options: Sam3Options | Sam3EmbedOptions
    ) -> list[Any]:
        """Encode the images not in the cache, then decode every (image, prompt) pair.

        The prompts are encoded once for the batch. With :class:`Sam3EmbedOptions` nothing is
        decoded: each image's raw output is its ``image_id``.
        """
        if isinstance(options, Sam3EmbedOptions):
            self.embeddings(batch)
            return [p.extra["image_id"] for p in batch]
        text = self.encode_text(batch[0].extra["tokens"])
        embeddings = self.embeddings(batch)
        return [self.decode(embedding, text, options.threshold) for embedding in embeddings]

    def postprocess(
        self, raw: Any, prepared: Prepared, options: Sam3Options | Sam3EmbedOptions
    ) -> dict[str, Any]:
        """Resize and binarise the kept masks, scale the boxes, sort by score.

        For :class:`Sam3EmbedOptions`, the image's ``image_id`` and ``expires_in_s``.

        Raises:
            PayloadTooLargeError: An embedding did not stay in the cache until the answer (it
                is larger than the budget, or the request's embeddings do not fit together).
        """
        if isinstance(options, Sam3EmbedOptions):
            return self._embedded(raw)
        return self._instances(raw, prepared, options)

    def cache_stats(self) -> CacheStats:
        """The embedding cache's counters (``/models/status``)."""
        return self.cache.stats()

    def reset_caches(self) -> None:
        """Forget every cached embedding and the cache's counters."""
        self.cache.reset()

    def close(self) -> None:
        """Drop the cached embeddings (device memory), then release the core."""
        self.cache.clear()
        self._positions = None
        super().close()

    def _embedded(self, key: str) -> dict[str, Any]:
        if key not in self.cache:
            budget = self.cache.budget_bytes / 2**20
            raise PayloadTooLargeError(
                f"The embedding of image_id {key!r} did not stay in SAM3's embedding cache "
                f"({budget:.0f} MiB, the sam3_cache_mb setting): embed fewer images at once, or "
                "raise the budget."
            )
        return {"image_id": key, "expires_in_s": self.cache.ttl_s}

    def _instances(
        self, raw: Detections, prepared: Prepared, options: Sam3Options
    ) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        width, height = prepared.width, prepared.height
        scale = np.asarray([width, height, width, height], np.float32)
        # Stable sort: equal scores keep prompt order, then query order.
        order = np.argsort(-raw.scores, kind="stable")
        overlay = MaskOverlay(prepared.extra["image"]) if requested(options) else None
        instances = []
        for k in order:
            # One mask at a time: at input resolution each is H·W floats.
            probs = torch.from_numpy(raw.mask_logits[k][None, None]).sigmoid()
            resized = F.interpolate(
                probs, size=(height, width), mode="bilinear", align_corners=False
            )
            mask = (resized[0, 0] > options.mask_threshold).numpy()
            prompt_index = int(raw.prompt_index[k])
            instance = {
                "prompt": options.prompts[prompt_index],
                "prompt_index": prompt_index,
                "score": float(raw.scores[k]),
                "box": [float(v) for v in raw.boxes[k] * scale],
                "area": int(mask.sum()),
                "mask": encode_mask(mask, options.output_format),
            }
            if overlay is not None:
                overlay.add(mask, instance["box"], f"{instance['prompt']} {instance['score']:.2f}")
            instances.append(instance)
        result: dict[str, Any] = {"width": width, "height": height, "instances": instances}
        if overlay is not None:
            result["visualization"] = encode_png(overlay.render())
        return result

    def warmup(self) -> None:
        """Run the text path, and the image path unless it would only cost time (CPU).

        The warm-up image bypasses the cache (it has no ``image_id``).
        """
        options = Sam3Options(prompts=["object"])
        tokens = self.tokenizer(options.prompts)
        if self.warmup_vision:
            pixels = self.preprocessing(Image.new("RGB", (64, 64)))
            self.forward([Prepared({"pixel_values": pixels}, 64, 64, {"tokens": tokens})], options)
        else:
            self.encode_text(tokens)

    # -- the steps, separately callable -----------------------------------------------------
    def embeddings(self, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Each image's vision outputs, as the decoder reads them.

        Images :meth:`prepare` found in the cache take theirs from it. The others are looked up
        again (a forward that ran since, for another request with the same image and other
        prompts, stored it), then encoded now, once per distinct image, in one vision call, and
        stored under their ``image_id`` when they have one.
        """
        cached: list[Embedding | None] = [p.extra.get("embedding") for p in batch]
        for i, prepared in enumerate(batch):
            key = prepared.extra.get("image_id")
            if cached[i] is None and key is not None:
                cached[i] = self.cache.get(key, count=False)  # prepare counted its miss
        outputs = [None if e is None else e.arrays for e in cached]
        missing = [i for i, out in enumerate(outputs) if out is None]
        if missing:
            # The same image twice in one batch is encoded once.
            first: dict[str, int] = {}
            unique: list[int] = []
            for i in missing:
                key = batch[i].extra.get("image_id")
                if key is None or key not in first:
                    if key is not None:
                        first[key] = i
                    unique.append(i)
            pixels = np.stack([batch[i].arrays["pixel_values"] for i in unique])
            for i, out in zip(unique, self.encode_images(pixels), strict=True):
                outputs[i] = out
                if batch[i].extra.get("image_id") is not None:
                    self._store(batch[i], out, copy=len(unique) > 1)
            for i in missing:
                if outputs[i] is None:
                    outputs[i] = outputs[first[batch[i].extra["image_id"]]]
        return [out for out in outputs if out is not None]

    def _store(self, prepared: Prepared, outputs: dict[str, Any], *, copy: bool) -> None:
        """Cache one image's hidden states (the position encodings are kept once)."""
        if self._positions is None:
            self._positions = {n: owned(outputs[n]) for n in self.position_names}
        # One image's slice of a batched output is a view of the whole batch: cache a copy.
        hidden = {n: owned(outputs[n]) if copy else outputs[n] for n in self.hidden_names}
        embedding = Embedding(hidden, self._positions, prepared.width, prepared.height)
        self.cache.put(prepared.extra["image_id"], embedding, embedding.nbytes)

    def encode_images(self, pixel_values: np.ndarray) -> list[Arrays]:
        """Run the vision graph on (B, 3, H, W) pixels; one embedding dict per image."""
        embeddings: list[Arrays] = []
        for start in range(0, len(pixel_values), self.images_per_call):
            # Embeddings stay where the runtime computed them (the GPU): the decoder reads them.
            out = self.core.run(
                "vision",
                {"pixel_values": pixel_values[start : start + self.images_per_call]},
                host=False,
            )
            count = len(out[self.vision_names[0]])
            embeddings += [
                {name: out[name][i : i + 1] for name in self.vision_names} for i in range(count)
            ]
        return embeddings

    def encode_text(self, tokens: Tokens) -> Arrays:
        """Run the text graph; returns ``text_features`` and the ``attention_mask`` it needs."""
        out = self.core.run(
            "text", {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        )
        return {"text_features": out["text_features"], "attention_mask": tokens.attention_mask}

    def decode(self, embedding: Arrays, text: Arrays, threshold: float) -> Detections:
        """Run every prompt against one image's embedding; keep queries scoring above threshold.

        Args:
            embedding: One image's vision outputs, batch axis 1 (see :meth:`encode_images`).
            text: The prompts' ``text_features`` and ``attention_mask`` (P rows).
            threshold: Scores must be strictly greater to be kept.

        """
        prompts = len(text["text_features"])
        parts = []
        for start in range(0, prompts, self.prompts_per_call):
            rows = slice(start, start + self.prompts_per_call)
            out = self.core.run(
                "decoder", {**embedding, **{k: v[rows] for k, v in text.items()}}, host=False
            )
            logits, presence = to_host(out["pred_logits"]), to_host(out["presence_logits"])
            scores = _sigmoid(logits) * _sigmoid(presence)
            prompt, query = np.nonzero(scores > threshold)
            parts.append(
                Detections(
                    prompt_index=(prompt + start).astype(np.int64),
                    scores=scores[prompt, query],
                    boxes=to_host(out["pred_boxes"])[prompt, query],
                    # Only the kept masks leave the device (all of them are P x Q x 288²).
                    mask_logits=_take(out["pred_masks"], prompt, query),
                )
            )
        return Detections.concat(parts)


def vision_output_names(levels: int) -> list[str]:
    """Names of the vision graph's outputs (and the decoder's image inputs)."""
    return [f"fpn_hidden_states_{i}" for i in range(levels)] + [
        f"fpn_position_encoding_{i}" for i in range(levels)
    ]


def _take(array: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``array[rows, cols]`` as a host array, gathering on the device for tensors."""
    if isinstance(array, np.ndarray):
        return array[rows, cols]
    import torch

    index = (torch.from_numpy(rows).to(array.device), torch.from_numpy(cols).to(array.device))
    return to_host(array[index])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
