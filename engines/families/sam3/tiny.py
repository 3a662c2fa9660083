"""A tiny random SAM3 checkpoint in the released layout, for tests (written in well under 1 s).

The model is ``Sam3Model`` at hidden size 32 and 112×112 input; the tokenizer a CLIP BPE
tokenizer over the 512 byte-level symbols plus merges for a few dozen words, saved with
``save_pretrained`` so ``AutoTokenizer`` loads it like the real one. A few weights are
scaled after random initialisation so scores and masks vary between queries and prompts
(plain random init gives every query a score near 0.25 and flat masks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.images import released_preprocessing

WORDS = (
    "a an the of and with on in red blue green white black small big cat cats dog person people "
    "man woman astronaut rocket flag coffee cup mug camera tripod face sky ground car tree "
    "building window"
).split()
IMAGE_SIZE = 112
TEXT_LENGTH = 32


def write_tiny(directory: Path) -> dict[str, str]:
    """Write a tiny random ``Sam3Model`` with a small CLIP tokenizer, at 112×112 input.

    Args:
        directory: Where to write; the checkpoint goes to its ``sam3-tiny`` subdirectory.

    Returns:
        ``{"tiny": "sam3-tiny"}``: the variant and its subdirectory.

    """
    target = directory / "sam3-tiny"
    write_tiny_checkpoint(target)
    return {"tiny": target.name}


def write_tiny_checkpoint(target: Path, seed: int = 0) -> None:
    """Write model weights, config, tokenizer files and ``preprocessor_config.json``."""
    import torch
    from transformers import Sam3Config, Sam3Model, Sam3VisionConfig, Sam3ViTConfig

    vocab, _ = _vocab_and_merges()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE_SIZE,
                patch_size=14,
                window_size=4,
                global_attn_indexes=[1],
                pretrain_image_size=56,
            ),
            fpn_hidden_size=32,
            scale_factors=[4.0, 2.0, 1.0, 0.5],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TEXT_LENGTH,
            "hidden_act": "gelu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        geometry_encoder_config={
            "hidden_size": 32,
            "num_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        detr_encoder_config={
            "hidden_size": 32,
            "num_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        detr_decoder_config={
            "hidden_size": 32,
            "num_layers": 1,
            "num_queries": 5,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    with torch.no_grad():
        # Spread the query logits over a few units and make "present" likely, so that some
        # queries score above 0.5 and the ranking depends on the prompt.
        model.dot_product_scoring.query_proj.weight.mul_(400.0)
        model.detr_decoder.presence_head.layer3.bias.fill_(2.0)
        # Queries start from boxes spread over the image rather than all at its centre.
        model.detr_decoder.reference_points.weight[:, :2].uniform_(-1.5, 1.5)
        model.detr_decoder.reference_points.weight[:, 2:].uniform_(-2.0, -0.5)
        model.detr_decoder.box_head.layer3.weight.mul_(10.0)
        # Larger mask logits: blobs with edges rather than a flat field around 0.
        model.mask_decoder.mask_embedder.layers[-1].weight.mul_(20.0)
    model.save_pretrained(target)

    tiny_tokenizer().save_pretrained(target)
    processor = {
        "image_processor_type": "Sam3ImageProcessor",
        "processor_class": "Sam3Processor",
        "do_convert_rgb": True,
        **released_preprocessing(
            {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        ),
        "mask_size": {"height": 32, "width": 32},
    }
    (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def tiny_tokenizer() -> Any:
    """Build a CLIP tokenizer over the byte symbols plus merges for :data:`WORDS`."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    # tokenizers' BPE wants (left, right) pairs, whatever CLIPTokenizer's annotation says.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=TEXT_LENGTH,
    )


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout: byte symbols, the same with ``</w>``, merges, then the special tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))
