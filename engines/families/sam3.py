"""SAM3: text-prompted instance segmentation (``facebook/sam3`` through transformers).

Each image is encoded once and every prompt of the request runs against that encoding: the
core has three graphs, ``vision`` (pixel_values → the FPN levels the detector reads),
``text`` (token ids → projected text features) and ``decoder`` (one row per prompt: image
levels + text features → masks, boxes, logits, presence), so work grows with prompts only by
the decoder's cost and an image-embedding cache can sit between :meth:`Sam3Pipeline.encode_images`
and :meth:`Sam3Pipeline.decode`.

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
from typing import Any, Protocol

import numpy as np
from PIL import Image

from engines.base import (
    Arrays,
    Family,
    LoadRequest,
    OnnxGraph,
    Pipeline,
    Prepared,
    VariantSpec,
    to_host,
)
from engines.checkpoints import resolve_checkpoint
from engines.errors import InvalidInputError
from engines.images import image_to_chw_float, resize_normalize
from engines.masks import FORMATS, encode_mask

LICENSE = "SAM License (gated)"
VARIANTS = {"sam3": VariantSpec("sam3", "facebook/sam3", LICENSE)}
# The released recipe (Sam3ImageProcessor's defaults), for keys a config file lacks.
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 1008, "width": 1008},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# Decoder rows per call: bounds memory (each row holds Q full-size mask logits and the pixel
# decoder's activations) while still batching prompts.
PROMPTS_PER_CALL = 8
# Images per vision-encoder call: the ViT's activations are ~1 GB per 1008² image.
IMAGES_PER_CALL = 4


class Sam3Options(Protocol):
    """The request fields this family reads."""

    prompts: Sequence[str]
    threshold: float
    mask_threshold: float
    output_format: str


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
        """Pre-process an RGB image into a (3, H, W) float32 array."""
        pixels = image_to_chw_float(image, self.rescale_factor)
        mode = "bicubic" if self.resample == 3 else "bilinear"
        return resize_normalize(pixels, self.size, mode, self.mean, self.std)


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
    ) -> None:
        super().__init__(core, checkpoint_dir)
        self.preprocessing = preprocessing
        self.tokenizer = tokenizer
        self.vision_names = vision_output_names(levels)
        self.prompts_per_call = prompts_per_call
        self.images_per_call = images_per_call
        self.warmup_vision = warmup_vision

    # -- the Pipeline contract -------------------------------------------------------------
    def prepare(self, image: Image.Image, options: Sam3Options) -> Prepared:
        """Check the options, tokenise the prompts (once per request) and pre-process the image.

        Raises:
            InvalidInputError: Unknown output format, or a prompt that is blank or too long.

        """
        if options.output_format not in FORMATS:
            raise InvalidInputError(
                f"Unknown output format {options.output_format!r}: use one of {', '.join(FORMATS)}."
            )
        tokens = self.tokenizer(options.prompts)
        pixels = self.preprocessing(image)
        return Prepared({"pixel_values": pixels}, image.width, image.height, {"tokens": tokens})

    def forward(self, batch: Sequence[Prepared], options: Sam3Options) -> list[Detections]:
        """Encode the images and the prompts once each, then decode every (image, prompt) pair."""
        tokens: Tokens = batch[0].extra["tokens"]
        text = self.encode_text(tokens)
        embeddings = self.encode_images(np.stack([p.arrays["pixel_values"] for p in batch]))
        return [self.decode(embedding, text, options.threshold) for embedding in embeddings]

    def postprocess(
        self, raw: Detections, prepared: Prepared, options: Sam3Options
    ) -> dict[str, Any]:
        """Resize and binarise the kept masks, scale the boxes, sort by score."""
        import torch
        import torch.nn.functional as F

        width, height = prepared.width, prepared.height
        scale = np.asarray([width, height, width, height], np.float32)
        # Stable sort: equal scores keep prompt order, then query order.
        order = np.argsort(-raw.scores, kind="stable")
        instances = []
        for k in order:
            # One mask at a time: at input resolution each is H·W floats.
            probs = torch.from_numpy(raw.mask_logits[k][None, None]).sigmoid()
            resized = F.interpolate(
                probs, size=(height, width), mode="bilinear", align_corners=False
            )
            mask = (resized[0, 0] > options.mask_threshold).numpy()
            prompt_index = int(raw.prompt_index[k])
            instances.append(
                {
                    "prompt": options.prompts[prompt_index],
                    "prompt_index": prompt_index,
                    "score": float(raw.scores[k]),
                    "box": [float(v) for v in raw.boxes[k] * scale],
                    "area": int(mask.sum()),
                    "mask": encode_mask(mask, options.output_format),
                }
            )
        return {"width": width, "height": height, "instances": instances}

    def warmup(self) -> None:
        """Run the text path, and the image path unless it would only cost time (CPU)."""
        options = _WarmupOptions()
        prepared = self.prepare(Image.new("RGB", (64, 64)), options)
        if self.warmup_vision:
            self.forward([prepared], options)
        else:
            self.encode_text(prepared.extra["tokens"])

    # -- the steps, separately callable (for an embedding cache) ----------------------------
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


@dataclass
class _WarmupOptions:
    prompts: Sequence[str] = ("object",)
    threshold: float = 0.5
    mask_threshold: float = 0.5
    output_format: str = "rle"


# Export parity: every query of every prompt is kept (threshold 0), so the comparison covers
# all Q instances per prompt whatever random weights make of the scores.
PARITY_OPTIONS = _WarmupOptions(prompts=("cat", "a person"), threshold=0.0)
# How far (in rank) a tied instance may have moved between runtimes, and the score difference
# within which a different instance at the same rank is taken for a tie rather than a mismatch.
TIE_WINDOW = 3


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


def detector_config(path: Path) -> Any:
    """The detector's ``Sam3Config`` of a checkpoint (also inside a ``sam3_video`` config)."""
    from transformers import AutoConfig, Sam3Config

    config = AutoConfig.from_pretrained(path)
    nested = getattr(config, "detector_config", None)
    if nested is not None:
        return Sam3Config(**nested) if isinstance(nested, dict) else nested
    return config


def _box_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(np.max(np.abs(np.asarray(a["box"]) - np.asarray(b["box"]))))


def _pair_by_rank(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]], side: float
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair one prompt's instances (both sorted by score) by rank, letting ties swap."""
    free = set(range(len(candidate)))
    pairs = []
    for i, a in enumerate(reference):
        if i in free:
            b = candidate[i]
            if abs(a["score"] - b["score"]) <= 1e-4 and _box_diff(a, b) <= 1e-3 * side:
                free.discard(i)
                pairs.append((a, b))
                continue
        window = [j for j in free if abs(j - i) <= TIE_WINDOW]
        if not window:
            continue
        j = min(window, key=lambda k: _box_diff(a, candidate[k]) / side
                + abs(a["score"] - candidate[k]["score"]))
        free.discard(j)
        pairs.append((a, candidate[j]))
    return pairs


def _mask_iou(a: dict[str, Any], b: dict[str, Any], height: int, width: int) -> float:
    from engines.masks import decode_mask

    x = decode_mask(a["mask"], "rle", height, width)
    y = decode_mask(b["mask"], "rle", height, width)
    union = int(np.logical_or(x, y).sum())
    return 1.0 if union == 0 else int(np.logical_and(x, y).sum()) / union


class Sam3Family(Family):
    """SAM3's image detector (``Sam3Model``, text prompts) through transformers."""

    name = "sam3"
    default_variant = "sam3"
    variants = VARIANTS
    graphs = ("vision", "text", "decoder")

    # Compared on instances matched by prompt and rank (ties may swap neighbours); boxes as a
    # fraction of the image's longer side, masks after resizing and thresholding.
    parity_gates = {
        "scores_max_abs_diff": ("<=", 1e-4),
        "boxes_max_abs_diff_rel": ("<=", 1e-3),
        "mask_iou_min": (">=", 0.99),
        "instances_matched_fraction": (">=", 1.0),
    }

    def load_torch(self, request: LoadRequest) -> Sam3Pipeline:
        """Load ``Sam3Model`` and the checkpoint's tokenizer; split into three graphs."""
        from transformers import AutoTokenizer, Sam3Model

        from engines.families.sam3_graphs import torch_graphs
        from engines.torch_runtime import DTYPES, TorchCore, set_torch_threads

        set_torch_threads(request.torch_threads)
        path = resolve_checkpoint(
            request.spec.source,
            request.hf_token,
            allow_patterns=["*.json", "*.safetensors", "*.txt"],
        )
        model: Any = Sam3Model.from_pretrained(path, dtype=DTYPES[request.dtype])
        model = model.to(request.device).eval()
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
        )

    # -- ONNX ------------------------------------------------------------------------------
    def load_onnx(self, request: LoadRequest, core: Any) -> Sam3Pipeline:
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
        )

    def onnx_graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """``vision`` (dynamic batch), ``text`` and ``decoder`` (dynamic prompts).

        The decoder is traced with a batch-1 image embedding and two prompts, so the graph
        records the broadcast of the embedding to one row per prompt (an ``Expand`` to the
        prompt count, which also accepts an embedding that already has P rows). The spatial
        size is fixed: SAM3 always resizes to its input size. The legacy exporter drops the
        decoder inputs the detector never reads (the two finer position encodings); the ONNX
        core feeds only the inputs a graph lists.
        """
        assert isinstance(pipeline, Sam3Pipeline)
        height, width = pipeline.preprocessing.size
        pixels = np.random.default_rng(0).standard_normal((2, 3, height, width), np.float32)
        names = pipeline.vision_names
        # One image is enough for the decoder's example embedding.
        vision = pipeline.core.run("vision", {"pixel_values": pixels[:1]})
        embedding = {name: vision[name][:1] for name in names}
        tokens = pipeline.tokenizer(PARITY_OPTIONS.prompts)
        text = pipeline.encode_text(tokens)
        decoder_outputs = ["pred_masks", "pred_boxes", "pred_logits", "presence_logits"]
        return [
            OnnxGraph(
                name="vision",
                inputs={"pixel_values": pixels},
                outputs=names,
                dynamic_axes={"pixel_values": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            ),
            OnnxGraph(
                name="text",
                inputs={"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask},
                outputs=["text_features"],
                dynamic_axes={
                    "input_ids": {0: "prompts"},
                    "attention_mask": {0: "prompts"},
                    "text_features": {0: "prompts"},
                },
            ),
            OnnxGraph(
                name="decoder",
                inputs={
                    "text_features": text["text_features"],
                    "attention_mask": text["attention_mask"],
                    **embedding,
                },
                outputs=decoder_outputs,
                dynamic_axes={
                    "text_features": {0: "prompts"},
                    "attention_mask": {0: "prompts"},
                    # 1 (broadcast to every prompt) or the prompt count.
                    **{n: {0: "image_rows"} for n in names},
                    **{n: {0: "prompts"} for n in decoder_outputs},
                },
            ),
        ]

    def parity_options(self) -> list[Any]:
        """Two prompts, every query kept."""
        return [PARITY_OPTIONS]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Worst score, box and mask differences over instances matched by prompt and rank.

        Within one prompt the i-th instance of one run is paired with the i-th of the other;
        if that one differs (score beyond the gate, or box beyond it) the nearest unpaired
        instance within :data:`TIE_WINDOW` ranks is taken instead, so that two queries with
        near-equal scores that swapped places are still compared with their own selves.
        """
        scores, boxes, ious = [0.0], [0.0], [1.0]
        matched = total = 0
        for ref, cand in zip(reference, candidate, strict=True):
            width, height = ref["width"], ref["height"]
            side = float(max(width, height))
            prompts = {i["prompt_index"] for i in ref["instances"] + cand["instances"]}
            for prompt in sorted(prompts):
                r = [i for i in ref["instances"] if i["prompt_index"] == prompt]
                c = [i for i in cand["instances"] if i["prompt_index"] == prompt]
                total += max(len(r), len(c))
                for a, b in _pair_by_rank(r, c, side):
                    matched += 1
                    scores.append(abs(a["score"] - b["score"]))
                    boxes.append(_box_diff(a, b) / side)
                    ious.append(_mask_iou(a, b, height, width))
        return {
            "scores_max_abs_diff": max(scores),
            "boxes_max_abs_diff_rel": max(boxes),
            "mask_iou_min": min(ious),
            "instances_matched_fraction": matched / total if total else 1.0,
        }

    def write_tiny(self, directory: Path) -> dict[str, str]:
        """Write a tiny random ``Sam3Model`` with a small CLIP tokenizer, at 112×112 input."""
        from engines.families.sam3_tiny import write_tiny_checkpoint

        target = directory / "sam3-tiny"
        write_tiny_checkpoint(target)
        return {"tiny": target.name}
