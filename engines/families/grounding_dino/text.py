"""GroundingDINO prompts: one caption per request, and which prompt each token belongs to.

The reference processor joins labels as ``"a cat. a dog."`` (stripped, lowercased, each
followed by ``.``); the model splits its text attention at ``.`` and restarts positions there,
so each label is read on its own. We tokenise that caption once per prompt list and keep, per
token, the index of the prompt whose characters it covers (from the tokenizer's offsets), so a
detection is always reported as a whole prompt, never a fragment of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import InvalidInputError

NO_PROMPT = -1  # [CLS], [SEP] and the "." separators we add


@dataclass(frozen=True)
class Caption:
    """A request's prompts as the model's text input.

    Attributes:
        prompts: The prompts as the request gave them.
        text: The caption the model reads (``"a cat. a dog."``).
        input_ids: Token ids, (T,) int64, with [CLS] and [SEP].
        token_type_ids: (T,) int64 zeros.
        attention_mask: (T,) int64 ones.
        token_prompt: (T,) int64, the prompt index of each token, or ``NO_PROMPT``.
    """

    prompts: tuple[str, ...]
    text: str
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    token_prompt: np.ndarray

    def arrays(self, batch_size: int) -> dict[str, np.ndarray]:
        """The text inputs repeated for a batch of images."""
        return {
            name: np.tile(getattr(self, name)[None], (batch_size, 1))
            for name in ("input_ids", "token_type_ids", "attention_mask")
        }


def join_prompts(prompts: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The caption and each prompt's (start, end) character span in it.

    Raises:
        InvalidInputError: No prompts, or a prompt that is empty after stripping.
    """
    if not prompts:
        raise InvalidInputError("Give at least one prompt.")
    parts, spans, cursor = [], [], 0
    for index, prompt in enumerate(prompts):
        label = prompt.strip().lower()
        if not label:
            raise InvalidInputError(f"Prompt {index} is empty; every prompt needs some text.")
        spans.append((cursor, cursor + len(label)))
        parts.append(label)
        cursor += len(label) + 2  # the ". " that follows
    return ". ".join(parts) + ".", spans


def encode_prompts(prompts: Sequence[str], tokenizer: Any, max_text_len: int) -> Caption:
    """Tokenise the joined prompts and map tokens back to prompts.

    Raises:
        InvalidInputError: An empty prompt, a prompt that yields no tokens, or more tokens than
            the model reads (it would silently drop the rest).
    """
    text, spans = join_prompts(prompts)
    encoded = tokenizer(text, return_offsets_mapping=True, return_token_type_ids=True)
    input_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    if len(input_ids) > max_text_len:
        raise InvalidInputError(
            f"The prompts make {len(input_ids)} tokens but GroundingDINO reads at most "
            f"{max_text_len} (including 2 special tokens and one '.' per prompt); "
            "send fewer or shorter prompts, or split them over several requests."
        )
    starts = np.asarray([s for s, _ in spans])
    ends = np.asarray([e for _, e in spans])
    token_prompt = np.full(len(input_ids), NO_PROMPT, dtype=np.int64)
    for i, (start, end) in enumerate(encoded["offset_mapping"]):
        if end <= start:  # special tokens have empty offsets
            continue
        owner = int(np.searchsorted(starts, start, side="right")) - 1
        if owner >= 0 and start < ends[owner]:
            token_prompt[i] = owner
    missing = sorted(set(range(len(prompts))) - set(token_prompt.tolist()))
    if missing:
        raise InvalidInputError(
            f"Prompt {missing[0]} ({prompts[missing[0]]!r}) yields no tokens the model can read."
        )
    return Caption(
        prompts=tuple(prompts),
        text=text,
        input_ids=input_ids,
        token_type_ids=np.zeros_like(input_ids),
        attention_mask=np.ones_like(input_ids),
        token_prompt=token_prompt,
    )
