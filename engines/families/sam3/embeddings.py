"""SAM3's image embeddings as its cache keeps them: the id of an image, the entry, its size.

An entry holds the vision encoder's FPN hidden states of one image where the core computed
them (torch tensors on the model's device, or numpy arrays from ONNX Runtime) and the input
size post-processing scales to. The FPN position encodings are not kept per image: they are a
sine embedding of the feature shapes only (transformers' ``Sam3SinePositionEmbedding`` takes
the shape, device and dtype), equal for every image at the pipeline's fixed input size, so the
pipeline keeps one copy and entries take half the bytes (106 MiB per 1008² image in float32).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Embedding:
    """One image's cached vision outputs.

    Attributes:
        hidden: ``fpn_hidden_states_{i}`` by name, batch axis 1, as the core returned them.
        positions: ``fpn_position_encoding_{i}``: one dict shared by all the pipeline's
            entries, so not counted in :attr:`nbytes`.
        width: Width of the image it was computed from.
        height: Height of that image.
    """

    hidden: dict[str, Any]
    positions: dict[str, Any]
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        """Bytes the image's own arrays (the hidden states) take on their device."""
        return sum(nbytes(array) for array in self.hidden.values())

    @property
    def arrays(self) -> dict[str, Any]:
        """The vision outputs by name, as the decoder graph reads them."""
        return {**self.hidden, **self.positions}


def image_id(image: Image.Image, variant: str) -> str:
    """The id of ``image``'s embedding by ``variant``: SHA-256 of its pixels, size and mode.

    Equal decoded pixels give equal ids whatever the bytes they came from (JPEG or PNG of the
    same pixels); the variant is part of the hash, so an id never names another variant's
    embedding.
    """
    digest = hashlib.sha256(f"{variant}\0{image.mode}\0{image.width}x{image.height}\0".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def nbytes(array: Any) -> int:
    """Bytes of a numpy array or a torch tensor (both have ``nbytes``)."""
    return int(array.nbytes)


def owned(array: Any) -> Any:
    """A copy of ``array`` with its own storage, on the same device.

    One image's slice of a batched output is a view that would keep the whole batch alive
    (and make the cache's byte count wrong).
    """
    return array.copy() if isinstance(array, np.ndarray) else array.clone()
