"""The ONNX Runtime engine: a :class:`~engines.base.Core` over the graphs of a manifest.

Execution providers are tried in the order TensorRT → CUDA → CPU, keeping those this build of
onnxruntime has and the settings allow. TensorRT builds fp16 engines into a cache directory
keyed by GPU and TensorRT version, so a restart does not rebuild them; CUDA runs with IO
binding; CPU uses as many intra-op threads as the process is given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifacts import Manifest
from engines.base import Arrays, to_host

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
NUMPY_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class OrtOptions:
    """How sessions are built.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        providers: Allowed providers in preference order (subset of tensorrt, cuda, cpu).
        intra_op_threads: CPU threads per session run.
        optimization: Graph optimisation level (``disable``, ``basic``, ``extended``, ``all``).
        trt_cache_dir: Root of the TensorRT engine cache.
        denormals_as_zero: Flush subnormal floats (|x| < 1.2e-38) to zero in the CPU
            provider's threads. MLAS slows down ~6x on subnormal inputs: GroundingDINO's
            shifted-window Swin blocks (masked scores of -100 give e^-100 probabilities) ran
            their output projection at 14 GFLOP/s, 350 ms of a 6.8 s forward; torch (oneDNN)
            was unaffected. Values that small carry nothing for these models. Applied to the
            session's pool threads and, for each run, to the calling thread.
    """

    device: str = "cpu"
    providers: Sequence[str] = ("tensorrt", "cuda", "cpu")
    intra_op_threads: int = 0
    optimization: str = "all"
    trt_cache_dir: Path = Path("artifacts/.trt-cache")
    denormals_as_zero: bool = True


@contextlib.contextmanager
def _calling_thread_denormals(flush: bool) -> Iterator[None]:
    """Flush subnormals (or not) on the calling thread for the duration of one CPU run.

    ORT applies ``session.set_denormal_as_zero`` to each session's own pool threads, but to
    the thread that calls ``run`` (which computes its share of every parallel loop) only
    through the first session the process creates, on the thread that creates it. The server
    loads sessions on one thread and runs them on another, so the flag is set here, and
    cleared afterwards (the process default), so torch on the same thread is unaffected.
    """
    import torch

    torch.set_flush_denormal(flush)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def select_providers(options: OrtOptions) -> list[str | tuple[str, dict[str, Any]]]:
    """Providers to pass to ``InferenceSession``, in order, with their options."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    on_gpu = options.device.startswith("cuda")
    device_id = int(options.device.split(":")[1]) if ":" in options.device else 0
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in options.providers:
        if name == "tensorrt" and on_gpu and "TensorrtExecutionProvider" in available:
            cache = options.trt_cache_dir / _trt_cache_key(device_id)
            cache.mkdir(parents=True, exist_ok=True)
            chosen.append(
                (
                    "TensorrtExecutionProvider",
                    {
                        "device_id": device_id,
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                    },
                )
            )
        elif name == "cuda" and on_gpu and "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
        elif name == "cpu":
            chosen.append("CPUExecutionProvider")
    if not chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _trt_cache_key(device_id: int) -> str:
    """GPU name + TensorRT version: engines built for one are not valid for another."""
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = "unknown"
    try:
        import torch

        gpu = torch.cuda.get_device_name(device_id)
    except Exception:
        gpu = f"gpu{device_id}"
    return "".join(c if c.isalnum() or c in "-." else "_" for c in f"{gpu}-trt{trt_version}")


class OrtCore:
    """Runs the graphs of one artifact with ONNX Runtime.

    Args:
        directory: The artifact directory.
        manifest: Its manifest.
        options: Session options.
        graphs: Only these graphs (default: all in the manifest).
    """

    engine = "onnx"

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        options: OrtOptions,
        graphs: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.options = options
        self.precision = manifest.precision
        self.providers = select_providers(options)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = _level(options.optimization)
        if options.intra_op_threads > 0:
            session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        # The intra-op threads stop spinning when a run returns (they still spin within one):
        # otherwise they spin on every core while the next request is decoded and
        # pre-processed on the same cores (DINOv3 at concurrency 1: pre-processing 1.87 ->
        # 1.47 ms, the forward unchanged; throughput at concurrency 4 and 16 within noise).
        session_options.add_session_config_entry("session.force_spinning_stop", "1")
        if options.denormals_as_zero:
            session_options.add_session_config_entry("session.set_denormal_as_zero", "1")
        self.sessions: dict[str, Any] = {}
        self._input_types: dict[str, dict[str, Any]] = {}
        self._bytes = 0
        for info in manifest.graphs:
            if graphs is not None and info.name not in graphs:
                continue
            path = directory / info.file
            self._bytes += path.stat().st_size
            session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=self.providers
            )
            self.sessions[info.name] = session
            self._input_types[info.name] = {
                i.name: NUMPY_DTYPES.get(i.type, np.float32) for i in session.get_inputs()
            }
        self.active_providers = sorted(
            {p for s in self.sessions.values() for p in s.get_providers()}
        )
        self._use_binding = "CUDAExecutionProvider" in self.active_providers

    def run(self, graph: str, inputs: Mapping[str, Any], *, host: bool = True) -> Arrays:
        """Run one graph; outputs are host arrays whatever ``host`` says.

        Inputs the graph does not list are ignored (the legacy exporter drops unused inputs),
        and inputs are cast to the dtypes the graph declares.
        """
        session = self.sessions[graph]
        types = self._input_types[graph]
        feed = {
            name: np.ascontiguousarray(to_host(inputs[name]), dtype=dtype)
            for name, dtype in types.items()
        }
        names = [o.name for o in session.get_outputs()]
        if self._use_binding:
            return self._run_bound(session, feed, names)
        with _calling_thread_denormals(self.options.denormals_as_zero):
            return dict(zip(names, session.run(names, feed), strict=True))

    def _run_bound(self, session: Any, feed: Mapping[str, np.ndarray], names: list[str]) -> Arrays:
        import onnxruntime as ort

        device_id = int(self.options.device.split(":")[1]) if ":" in self.options.device else 0
        binding = session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id)
            )
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def memory_bytes(self) -> int:
        """Size of the graph files (ORT's own arenas are not counted)."""
        return self._bytes

    def close(self) -> None:
        """Drop the sessions."""
        self.sessions.clear()


class HybridCore:
    """Graphs split between runtimes: each graph name goes to the core that has it."""

    def __init__(self, cores: Mapping[str, Any]) -> None:
        self.cores = dict(cores)
        engines = sorted({c.engine for c in self.cores.values()})
        self.engine = "+".join(engines)
        self.precision = next(
            (c.precision for c in self.cores.values() if hasattr(c, "precision")), None
        )

    def run(self, graph: str, inputs: Mapping[str, Any], *, host: bool = True) -> dict[str, Any]:
        """Dispatch ``graph`` to its core."""
        return self.cores[graph].run(graph, inputs, host=host)

    def where(self) -> dict[str, str]:
        """Graph name → engine."""
        return {name: core.engine for name, core in self.cores.items()}

    def memory_bytes(self) -> int:
        """Sum over distinct cores."""
        return sum(c.memory_bytes() for c in {id(c): c for c in self.cores.values()}.values())

    def close(self) -> None:
        """Close every distinct core."""
        for core in {id(c): c for c in self.cores.values()}.values():
            core.close()


def _level(name: str) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if name not in levels:
        raise ValueError(f"Unknown ORT optimisation level {name!r}: use {', '.join(levels)}")
    return levels[name]
