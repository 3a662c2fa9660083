"""The torch runtime: a :class:`~engines.base.Core` over ``nn.Module`` graphs."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.base import LoadRequest, to_host
from engines.checkpoints import resolve_checkpoint
from engines.linear import packed_bytes, use_packed_linears

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,  # export parity references only
}

GraphFn = Callable[..., Mapping[str, torch.Tensor]]


def use_channels_last(module: torch.nn.Module) -> None:
    """Keep ``module``'s 4-D weights channels-last (NHWC), in place.

    oneDNN's own layout on CPU: convolutions fed channels-last weights give channels-last
    outputs, and the layers after them (bilinear upsampling, above all) take a faster path.
    DA-V2-small's whole forward: 430 -> 149 ms in bf16 together with the attention blocks,
    of which the layout is 187 -> 149 (``benchmarks/bench_attention.py``).
    """
    # The documented ``Module.to(memory_format=...)``, which torch's stubs do not declare.
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class TorchCore:
    """Runs named graphs of a torch module under ``inference_mode``.

    Args:
        module: The loaded network; kept for memory accounting and release.
        graphs: Graph name to a function taking tensors by input name and returning tensors.
        device: Device the module lives on.
        dtype: Floating dtype of the module; float inputs are cast to it.
        float32_inputs: Inputs kept in float32 whatever ``dtype`` is (camera matrices, which
            half precision would round).
    """

    engine = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        graphs: Mapping[str, GraphFn],
        device: str,
        dtype: str,
        float32_inputs: Sequence[str] = (),
    ) -> None:
        self.module = module.eval()
        self.graphs = dict(graphs)
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.float32_inputs = frozenset(float32_inputs)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            use_packed_linears(self.module)  # bf16 weights prepacked for oneDNN, once

    def run(
        self, graph: str, inputs: Mapping[str, np.ndarray | torch.Tensor], *, host: bool = True
    ) -> dict[str, Any]:
        """Run ``graph``: numpy (or tensors) in, numpy out.

        With ``host=False`` the outputs stay tensors on the device, to chain graphs without
        copying through host memory.
        """
        tensors = {
            name: self._to_device(a, torch.float32 if name in self.float32_inputs else None)
            for name, a in inputs.items()
        }
        with torch.inference_mode():
            outputs = self.graphs[graph](**tensors)
        if not host:
            return {name: t for name, t in outputs.items() if t is not None}
        return {name: to_host(t) for name, t in outputs.items() if t is not None}

    def _to_device(
        self, array: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        dtype = dtype or self.dtype
        if isinstance(array, torch.Tensor):
            if array.is_floating_point():
                return array.to(self.device, dtype)
            return array.to(self.device)
        tensor = torch.from_numpy(np.asarray(array, order="C"))  # 0-d stays 0-d
        if tensor.is_floating_point():
            return tensor.to(self.device, dtype, non_blocking=True)
        return tensor.to(self.device, non_blocking=True)

    def memory_bytes(self) -> int:
        """Bytes of parameters, buffers and prepacked weights."""
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors) + packed_bytes(self.module)

    def close(self) -> None:
        """Drop the module and return cached GPU memory."""
        self.graphs.clear()
        self.module = torch.nn.Module()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def set_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads once per process (inter-op can only be set before use)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def torch_checkpoint(request: LoadRequest, patterns: Sequence[str]) -> Path:
    """Find the checkpoint's files (``patterns``) for a torch load.

    Thread counts are not set here: each pool thread sets its own (:mod:`engines.threads`).
    """
    return resolve_checkpoint(request.spec.source, request.hf_token, allow_patterns=patterns)
