"""GroundingDINO and MM-GroundingDINO: open-vocabulary detection from text prompts.

Pre-processing (:mod:`grounding_dino_images`), prompts (:mod:`grounding_dino_text`) and
post-processing (:mod:`grounding_dino_detections`) live next to this module and are shared by
every runtime; the core runs one graph ``model``: pixel_values, pixel_mask, input_ids,
token_type_ids, attention_mask → logits (B, Q, T), pred_boxes (B, Q, 4) and reference_points
(B, Q, 4), the top-k encoder proposals the Q queries start from (which identify the queries
when two runs are compared; post-processing does not read them). The Swin backbone
(``model.model.backbone``) sees only pixels and is where an export could split the graph, but it
is ~14 % of the time at 800²; the text-conditioned encoder/decoder is the rest.

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
import json
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from engines.base import Family, LoadRequest, OnnxGraph, Pipeline, Prepared, VariantSpec
from engines.checkpoints import resolve_checkpoint
from engines.families.grounding_dino_detections import detections
from engines.families.grounding_dino_images import (
    DEFAULT_PREPROCESSING,
    Preprocessing,
    load_preprocessing,
    pad_batch,
)
from engines.families.grounding_dino_text import Caption, encode_prompts

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


class GroundingDinoOptions(Protocol):
    """The request fields this family reads."""

    prompts: list[str]
    box_threshold: float
    text_threshold: float


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
        return cls({"pixel_values": pixels}, image.width, image.height, {"caption": caption})

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
        if getattr(options, "keep_raw", False):  # export parity only: the queries themselves
            result["raw"] = raw
        return result

    def warmup(self) -> None:
        """One forward on a blank image."""
        options = _WarmupOptions()
        self.forward([self.prepare(Image.new("RGB", (64, 48)), options)], options)


@dataclass
class _WarmupOptions:
    prompts: list[str] = field(default_factory=lambda: ["object"])
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    keep_raw: bool = False


# Export parity: low thresholds (random weights), and the raw queries kept in the results.
PARITY_OPTIONS = _WarmupOptions(
    prompts=["a cat", "a person", "rocket"], box_threshold=0.7, text_threshold=0.4, keep_raw=True
)
# Two runs' queries are the same query when they start from the same proposal: reference
# points within this much (fractions of the image; one runtime's rounding moves them ~1e-7).
SAME_PROPOSAL = 1e-4


class GroundingDinoFamily(Family):
    """GroundingDINO (IDEA-Research) and MM-GroundingDINO (OpenMMLab) through transformers."""

    name = "grounding-dino"
    aliases = ("grounding_dino",)
    default_variant = "tiny"
    variants = VARIANTS

    def load_torch(self, request: LoadRequest) -> GroundingDinoPipeline:
        """Load with ``AutoModelForZeroShotObjectDetection`` and the checkpoint's tokenizer.

        That resolves ``GroundingDinoForObjectDetection`` or, for MM-GroundingDINO
        checkpoints, ``MMGroundingDinoForObjectDetection``; both take and return the same.
        """
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoTokenizer

        from engines.torch_runtime import DTYPES, TorchCore, set_torch_threads

        set_torch_threads(request.torch_threads)
        path = resolve_checkpoint(
            request.spec.source,
            request.hf_token,
            allow_patterns=["*.json", "*.safetensors", "*.txt"],
        )
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            path, dtype=DTYPES[request.dtype]
        )
        model = model.to(request.device).eval()
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

    # -- ONNX ------------------------------------------------------------------------------
    # The top-k query selection flips between runtimes on tiny float differences (two
    # near-equal encoder scores swap ranks, or one replaces the other), which changes those
    # queries' outputs (content queries are learned per rank) and, through the decoder's
    # self-attention, every query of that image a little. So queries are identified by the
    # proposal they start from, and compared where both runs selected the same proposals in
    # the same order; detections are compared per query there. The fraction of images with the
    # same selection is gated too, so that the continuous gates never pass for want of anything
    # to compare (on a full-size random Swin-T model, ORT fp32 kept float64's selection on 2 of
    # the 4 photos, torch float32 on none).
    parity_gates = {
        "query_probs_max_abs_diff": ("<=", 1e-4),
        "query_boxes_max_abs_diff": ("<=", 1e-3),
        "scores_max_abs_diff": ("<=", 1e-4),
        "boxes_max_abs_diff_rel": ("<=", 1e-3),
        "detections_matched_fraction": (">=", 0.95),
        "queries_matched_fraction": (">=", 0.98),
        "images_same_selection_fraction": (">=", 0.25),
    }

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

    def onnx_graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """The whole model as one graph, dynamic in batch, height, width and text length.

        The backbone is not split off: it is ~14 % of the time and sees only pixels, so a
        separate graph would buy nothing but an extra copy of its features. The example is a
        padded batch of a landscape and a portrait image at the checkpoint's sizes (small
        sizes would make Swin shrink its windows, and the trace keep that). The trace runs
        inside :mod:`export.patches` (the text mask without ``isin``/``cummax``, Swin padding
        and cropping for every size, the deformable attention's sizes from the traced shapes).
        """
        from export.patches import patched

        assert isinstance(pipeline, GroundingDinoPipeline)
        core = pipeline.core
        core.graphs["model"] = patched(core.graphs["model"])  # type: ignore[attr-defined]
        rng = np.random.default_rng(0)
        images = [
            rng.standard_normal((3, *pipeline.preprocessing.output_size(w, h)), np.float32)
            for w, h in ((640, 480), (480, 640))
        ]
        pixel_values, pixel_mask = pad_batch(images)
        caption = pipeline.caption(PARITY_OPTIONS.prompts)
        text = ("input_ids", "token_type_ids", "attention_mask")
        return [
            OnnxGraph(
                name="model",
                inputs={"pixel_values": pixel_values, "pixel_mask": pixel_mask,
                        **caption.arrays(2)},
                outputs=["logits", "pred_boxes", "reference_points"],
                dynamic_axes={
                    "pixel_values": {0: "batch", 2: "height", 3: "width"},
                    "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                    **{name: {0: "batch", 1: "text"} for name in text},
                    "logits": {0: "batch", 2: "text"},
                    "pred_boxes": {0: "batch"},
                    "reference_points": {0: "batch"},
                },
            )
        ]

    def parity_options(self) -> list[Any]:
        """Three prompts, low thresholds, raw queries kept."""
        return [PARITY_OPTIONS]

    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Queries and detections of two runs, paired by the proposal they start from.

        Per image, queries are paired by reference point (:data:`SAME_PROPOSAL`); the image
        counts as having the same selection when every query is paired with the query of the
        same rank (content queries are learned per rank, so a swap matters). There, the paired
        queries' probabilities (sigmoid of the finite logits) and boxes (cxcywh, fractions of
        the image) are compared, and so are the detections of paired queries (score; box in
        pixels over the image's longer side), a detection only one run kept counting as
        unmatched. Images whose selections differ give only ``flipped_query_probs_max_abs_diff``
        (informative); if no image has the same selection (a drifting int8 artifact), all the
        figures are taken over the paired queries of all images instead. ``logits_max_abs_diff`` and
        ``detections_per_run`` are informative.
        """
        keys = ("probs", "boxes", "logits", "scores", "detection_boxes", "found", "total")
        same: dict[str, list[float]] = {k: [0.0] for k in keys}
        flipped: dict[str, list[float]] = {k: [0.0] for k in keys}
        paired = queries = same_images = detected = 0
        for ref, cand in zip(reference, candidate, strict=True):
            a, b = ref["raw"], cand["raw"]
            pairs = _pair_queries(a["reference_points"], b["reference_points"])
            count = max(len(a["reference_points"]), len(b["reference_points"]))
            paired, queries = paired + len(pairs), queries + count
            detected = max(detected, len(ref["detections"]), len(cand["detections"]))
            # The decoder's content queries are learned per rank: two proposals that swapped
            # ranks change their own outputs (and, through self-attention, everyone's a little).
            identical = len(pairs) == count and all(i == j for i, j in pairs)
            figures = same if identical else flipped
            same_images += identical
            for i, j in pairs:
                x, y = a["logits"][i], b["logits"][j]
                finite = np.isfinite(x)
                if not np.array_equal(finite, np.isfinite(y)):
                    figures["probs"].append(float("inf"))
                    continue
                figures["logits"].append(_max_abs(x[finite], y[finite]))
                figures["probs"].append(_max_abs(_sigmoid(x[finite]), _sigmoid(y[finite])))
                figures["boxes"].append(_max_abs(a["pred_boxes"][i], b["pred_boxes"][j]))
            # Detections of paired queries; one kept by a single run (or by a query the other
            # run did not select) counts as unmatched.
            side = float(max(ref["width"], ref["height"]))
            by_query_a, by_query_b = _detections_by_query(ref), _detections_by_query(cand)
            partner = dict(pairs)
            matched = [(i, partner[i]) for i in by_query_a if partner.get(i) in by_query_b]
            figures["found"].append(len(matched))
            figures["total"].append(len(by_query_a) + len(by_query_b) - len(matched))
            for i, j in matched:
                da, db = by_query_a[i], by_query_b[j]
                figures["scores"].append(abs(da["score"] - db["score"]))
                figures["detection_boxes"].append(
                    _max_abs(np.asarray(da["box"]), np.asarray(db["box"])) / side
                )
        # Gated figures come from images with the same selection, or from all if there is none.
        gated = same if same_images else {k: same[k] + flipped[k] for k in keys}
        total = sum(gated["total"])
        return {
            "query_probs_max_abs_diff": max(gated["probs"]),
            "query_boxes_max_abs_diff": max(gated["boxes"]),
            "logits_max_abs_diff": max(gated["logits"]),
            "queries_matched_fraction": paired / queries if queries else 1.0,
            "images_same_selection_fraction": same_images / len(reference) if reference else 1.0,
            "flipped_query_probs_max_abs_diff": max(flipped["probs"]),
            "scores_max_abs_diff": max(gated["scores"]),
            "boxes_max_abs_diff_rel": max(gated["detection_boxes"]),
            "detections_matched_fraction": sum(gated["found"]) / total if total else 1.0,
            "detections_per_run": float(detected),
        }

    def write_tiny(self, directory: Path) -> dict[str, str]:
        """A tiny random GroundingDINO with a BERT-style tokenizer, in the released layout."""
        target = directory / "grounding-dino-tiny"
        write_tiny_checkpoint(target)
        return {"tiny": target.name}


def write_tiny_checkpoint(target: Path, *, mm: bool = False, seed: int = 0) -> Path:
    """Write a tiny random (MM-)GroundingDINO checkpoint with tokenizer and processor config.

    The model hard-codes [CLS]/[SEP]/./? as ids 101/102/1012/1029, so the vocabulary keeps
    BERT's ids for those; it holds single letters and ``##`` letter pieces (any lowercase
    word tokenises) plus a few whole words. ``d_model`` is a multiple of 32 (GroupNorm(32)) and
    there are two decoder layers (the box heads are tied across layers).
    """
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
        SwinConfig,
    )

    torch.manual_seed(seed)
    vocab = _tiny_vocab()
    config_cls: Any = MMGroundingDinoConfig if mm else GroundingDinoConfig
    model_cls: Any = MMGroundingDinoForObjectDetection if mm else GroundingDinoForObjectDetection
    swin: dict[str, Any] = {
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 7,
        "image_size": 224,
        "out_indices": [2, 3, 4],
    }
    config = config_cls(
        backbone_config=SwinConfig(**swin),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=50,
    )
    model = model_cls(config).eval()
    with torch.no_grad():
        # Random weights give logits of std ~5 whose sigmoids saturate at 0 or 1 (GroundingDINO),
        # or sit near sigmoid(-4.6) (MM's prior bias): spread them over (0, 1) instead, so that
        # thresholds matter in tests.
        if mm:
            for head in model.class_embed:
                head.bias.zero_()
        else:
            model.model.decoder.layer_norm.weight.mul_(0.2)
            model.model.decoder.layer_norm.bias.mul_(0.2)
    model.save_pretrained(target)
    BertTokenizer(vocab=vocab).save_pretrained(target)
    processor = {
        **DEFAULT_PREPROCESSING,
        "size": {"shortest_edge": 224, "longest_edge": 320},
        "format": "coco_detection",
        "image_processor_type": "GroundingDinoImageProcessor",
        "processor_class": "GroundingDinoProcessor",
    }
    (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return target


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(diff.max(initial=0.0))


def _pair_queries(reference: np.ndarray, candidate: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j) of queries of two runs that start from the same proposal.

    Query i is paired with query i when their reference points agree, else with the nearest
    unpaired query that agrees (the selection shifted ranks), else with none.
    """
    distance = np.abs(
        reference[:, None, :].astype(np.float64) - candidate[None, :, :].astype(np.float64)
    ).max(-1)
    free = np.ones(len(candidate), bool)
    pairs = []
    for i in range(len(reference)):
        if i < len(candidate) and free[i] and distance[i, i] <= SAME_PROPOSAL:
            j = i
        else:
            row = np.where(free, distance[i], np.inf)
            j = int(row.argmin()) if len(row) else -1
            if j < 0 or row[j] > SAME_PROPOSAL:
                continue
        free[j] = False
        pairs.append((i, j))
    return pairs


def _detections_by_query(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The detections of one post-processed image, keyed by the query each came from.

    A detection is recognised by its box and score, which are the query's box in pixels and
    best probability as :func:`detections` computed them from the same raw arrays.
    """
    from engines.families.grounding_dino_detections import _to_pixels

    found = result["detections"]
    if not found:
        return {}
    raw = result["raw"]
    pixels = _to_pixels(raw["pred_boxes"], result["width"], result["height"])
    best = _sigmoid(raw["logits"]).max(axis=1)
    by_query = {}
    for detection in found:
        distance = np.abs(pixels - np.asarray(detection["box"], np.float32)).max(axis=1)
        distance += np.abs(best - detection["score"])
        by_query[int(distance.argmin())] = detection
    return by_query


def _tiny_vocab() -> dict[str, int]:
    specials = {
        "[PAD]": 0,
        "[UNK]": 100,
        "[CLS]": 101,
        "[SEP]": 102,
        "[MASK]": 103,
        ".": 1012,
        "?": 1029,
    }
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = [*letters, *(f"##{c}" for c in letters), *",-'!()/&:;"]
    words += "a an the cat dog person man woman rocket coffee cup mug camera astronaut".split()
    vocab = dict(specials)
    free = (i for i in range(1100) if i not in specials.values())
    for word in dict.fromkeys(words):
        vocab.setdefault(word, next(free))
    for i in free:
        vocab[f"[unused{i}]"] = i
    return vocab
