"""A tiny random GroundingDINO (or MM-GroundingDINO) checkpoint, for tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.families.grounding_dino.images import DEFAULT_PREPROCESSING


def write_tiny(directory: Path) -> dict[str, str]:
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
    vocab = tiny_vocab()
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


def tiny_vocab() -> dict[str, int]:
    """A small BERT-style vocabulary keeping BERT's ids for its special tokens, ``.``, ``?``.

    Single letters and ``##`` letter pieces (so any lowercase word tokenises), some punctuation
    and a few whole words, padded with ``[unusedN]`` entries up to id 1099.
    """
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
