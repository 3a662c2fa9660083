"""A fake model family that drives the pool's and the HTTP layer's mechanics.

Every real family is tested through its real code; this one only makes timing observable
(a forward that waits on an event, a load that counts itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import torch
from PIL import Image

from engines.base import Family, LoadRequest, Pipeline, Prepared, VariantSpec
from engines.errors import InvalidInputError
from engines.registry import FamilyRegistry
from service.schemas.common import Endpoint, Images, InferenceResponse, Variant

POISON_WIDTH = 13  # an image this wide makes the forward it is in fail
INVALID_WIDTH = 11  # an image this wide is refused by pre-processing (a 400)


class GateCore:
    """A core whose forward blocks until ``gate`` is set."""

    engine = "torch"

    def __init__(self, gate: threading.Event, memory_bytes: int = 1024) -> None:
        self.gate = gate
        self.closed = False
        self._memory_bytes = memory_bytes

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        if self.closed:
            raise RuntimeError("ran after close")
        return {"sum": inputs["x"].reshape(len(inputs["x"]), -1).sum(axis=1)}

    def memory_bytes(self) -> int:
        return self._memory_bytes

    def close(self) -> None:
        self.closed = True


class GatePipeline(Pipeline[Any]):
    def prepare(self, image: Image.Image, options: Any) -> Prepared:
        if image.width == INVALID_WIDTH:
            raise InvalidInputError("the gate model takes images of any width but this one")
        thread = threading.current_thread().name  # which executor prepared it
        extra = {"on": thread, "torch_threads": torch.get_num_threads()}
        return Prepared({"x": np.asarray(image, np.float32)}, image.width, image.height, extra)

    def decode_size(self, width: int, height: int, options: Any) -> tuple[int, int] | None:
        return width // 2, height // 2  # what a model that halves its images would say

    def forward(self, batch: Sequence[Prepared], options: Any) -> list[Any]:
        if any(p.width == POISON_WIDTH for p in batch):
            raise ValueError("a poisoned image")
        out = self.core.run("model", {"x": np.stack([p.arrays["x"] for p in batch])})
        return [{"sum": float(s), "batch": len(batch)} for s in out["sum"]]

    def postprocess(self, raw: Any, prepared: Prepared, options: Any) -> dict[str, Any]:
        return {
            **raw,
            "width": prepared.width,
            "prepared_on": prepared.extra["on"],
            "prepare_torch_threads": prepared.extra["torch_threads"],
            "postprocessed_on": threading.current_thread().name,
        }


class GateOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The gate family reads no option."""


class GateRequest(GateOptions, kw_only=True, forbid_unknown_fields=True):
    images: Images
    variant: Variant = None


class GateResponse(InferenceResponse, kw_only=True):
    results: list[dict[str, Any]]


GATE_ENDPOINT = Endpoint(
    model_type="gate",
    request=GateRequest,
    response=GateResponse,
    summary="Sums of pixels",
    description="The gate family's answer.",
)


class GateFamily(Family):
    name = "gate"
    aliases = ("gate_alias",)
    default_variant = "one"
    options_type = GateOptions
    variants = {
        "one": VariantSpec("one", "memory://one"),
        "two": VariantSpec("two", "memory://two"),
    }

    def __init__(self, load_s: float = 0.2, memory_mb: float | None = None) -> None:
        self.memory_mb = memory_mb
        self.gate = threading.Event()
        self.gate.set()
        self.loads = 0
        self.load_s = load_s
        self.cores: list[GateCore] = []

    def load_torch(self, request: LoadRequest) -> GatePipeline:
        self.loads += 1
        time.sleep(self.load_s)
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        memory = 1024 if self.memory_mb is None else int(self.memory_mb * 2**20)
        core = GateCore(self.gate, memory)
        self.cores.append(core)
        return GatePipeline(core)


def gate_registry(family: GateFamily) -> FamilyRegistry:
    registry = FamilyRegistry()
    registry.register(family)
    return registry
