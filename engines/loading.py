"""Loading one variant: which runtime, which providers, which precision, then warm-up.

The pool decides *when* a variant is loaded and keeps it resident; this module decides *how*:
ONNX Runtime from an exported artifact when one matches the checkpoint (graphs the artifact
lacks run on torch), torch otherwise, and the reason for any fallback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Core, Family, LoadRequest, Pipeline, VariantSpec
from engines.devices import resolve_dtype
from engines.errors import InferenceError, NotFoundError, UnavailableError, VisionError

log = logging.getLogger(__name__)
ENGINES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class LoaderConfig:
    """How variants are loaded.

    Attributes:
        dtype: ``auto`` (float16 on CUDA, float32 on CPU) or an explicit dtype.
        threads: Intra-op threads for torch and ONNX Runtime on CPU.
        hf_token: Token for gated Hugging Face repos.
        artifacts_dir: Where exported ONNX artifacts live.
        onnx_precision: The artifact precision to serve (``fp32``, ``fp16``, ``int8``).
        ort_providers: ONNX Runtime providers in order of preference.
        ort_optimization: ONNX Runtime's graph optimisation level.
    """

    dtype: str = "auto"
    threads: int = 1
    hf_token: str | None = None
    artifacts_dir: Path | None = None
    onnx_precision: str = "fp32"
    ort_providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    ort_optimization: str = "all"


@dataclass(frozen=True)
class Loaded:
    """A loaded pipeline and how it was loaded."""

    pipeline: Pipeline[Any]
    engine: str
    dtype: str
    memory_mb: float
    fallback_reason: str | None = None
    placement: dict[str, str] = field(default_factory=dict)


class ModelLoader:
    """Loads variants of families according to a :class:`LoaderConfig` (blocking calls).

    Args:
        config: Runtime, precision and artifact settings.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config

    def load(self, family: Family, spec: VariantSpec, device: str, engine: str) -> Loaded:
        """Load ``spec`` of ``family`` on ``device`` with ``engine`` and warm it up.

        Raises:
            NotFoundError: Unknown engine, or ``onnx`` asked for without a usable artifact.
            UnavailableError: Not enough (GPU) memory.
            InferenceError: Anything else; the detail names the model and the exception class,
                the log has the traceback.
        """
        if engine not in ENGINES:
            raise NotFoundError(f"Unknown engine {engine!r}: use auto, onnx or torch.")
        label = f"{family.name}/{spec.name}"
        dtype = resolve_dtype(self.config.dtype, device)
        request = LoadRequest(spec, device, dtype, self.config.threads, self.config.hf_token)
        started = time.perf_counter()
        try:
            pipeline, fallback_reason = None, None
            if engine in ("auto", "onnx"):
                pipeline, fallback_reason = self._load_onnx(family, request, engine == "onnx")
            if pipeline is None:
                pipeline = family.load_torch(request)
            # ONNX Runtime reaches its steady speed only after a couple of runs.
            for _ in range(1 if pipeline.core.engine == "torch" else 2):
                pipeline.warmup()
        except VisionError:
            raise
        except MemoryError:
            raise UnavailableError(
                f"Not enough memory to load {label}; unload other models first.",
                retry_after_s=30,
            ) from None
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise UnavailableError(
                    f"Not enough GPU memory to load {label}; unload other models or use a "
                    "smaller variant.",
                    retry_after_s=30,
                ) from None
            log.exception("loading %s from %s failed", label, spec.source)
            raise InferenceError(
                f"Could not load {label} from {spec.source} ({type(exc).__name__}); the server "
                "log has the details."
            ) from exc
        engine_used = pipeline.core.engine
        log.info(
            "loaded %s on %s (%s, %s) in %.1f s",
            label,
            device,
            engine_used,
            dtype,
            time.perf_counter() - started,
        )
        return Loaded(
            pipeline=pipeline,
            engine=engine_used,
            dtype=dtype if engine_used == "torch" else self.config.onnx_precision,
            memory_mb=round(pipeline.core.memory_bytes() / 2**20, 1),
            fallback_reason=fallback_reason,
            placement=placement(family, pipeline.core),
        )

    def _load_onnx(
        self, family: Family, request: LoadRequest, explicit: bool
    ) -> tuple[Pipeline[Any] | None, str | None]:
        """The pipeline on ONNX Runtime, or ``(None, reason)`` to fall back to torch.

        A graph the artifact lacks runs on torch (a hybrid core); a session that fails to build
        falls back to torch entirely, with the reason logged and reported in the status.
        """
        from engines.artifacts import find_artifact, weights_sha256
        from engines.checkpoints import resolve_checkpoint

        spec = request.spec
        if not family.serves_onnx:
            unsupported = f"{family.name} has no ONNX Runtime support yet"
            if explicit:
                raise NotFoundError(f"{unsupported}; load it with engine 'torch'.")
            return None, unsupported
        manifest, directory, reason = find_artifact(
            self.config.artifacts_dir, family.name, spec.name, None, self.config.onnx_precision
        )
        if manifest is not None:
            weights = weights_sha256(resolve_checkpoint(spec.source, request.hf_token))
            if manifest.weights_sha256 != weights:
                reason = (
                    f"the artifact in {directory} was exported from other weights "
                    f"({manifest.weights_sha256[:12]} != {weights[:12]}); export it again"
                )
                manifest = None
        if manifest is None:
            if explicit:
                raise NotFoundError(
                    f"No usable ONNX artifact for {family.name}/{spec.name}: {reason}. Create one "
                    f"with `vision-api export {family.name} --variant {spec.name}`, or load with "
                    "engine 'torch'."
                )
            return None, reason
        try:
            core, hybrid_reason = self._ort_core(family, request, directory, manifest)
            return family.load_onnx(request, core), hybrid_reason
        except VisionError:
            raise
        except Exception as exc:
            log.warning(
                "ONNX Runtime failed for %s/%s, falling back to torch",
                family.name,
                spec.name,
                exc_info=True,
            )
            return None, f"ONNX Runtime failed ({type(exc).__name__}); the server log has why"

    def _ort_core(
        self, family: Family, request: LoadRequest, directory: Path, manifest: Any
    ) -> tuple[Core, str | None]:
        """An ONNX Runtime core over the artifact, hybrid with torch for graphs it lacks."""
        from engines.onnx_runtime import HybridCore, OrtCore, OrtOptions

        options = OrtOptions(
            device=request.device,
            providers=self.config.ort_providers,
            intra_op_threads=self.config.threads,
            optimization=self.config.ort_optimization,
            trt_cache_dir=(self.config.artifacts_dir or Path("artifacts")) / ".trt-cache",
        )
        ort_core = OrtCore(directory, manifest, options)
        missing = [g for g in family.graphs if g not in ort_core.sessions]
        if not missing:
            return ort_core, None
        torch_core = family.load_torch(request).core
        core = HybridCore(
            {g: ort_core if g in ort_core.sessions else torch_core for g in family.graphs}
        )
        return core, f"graphs {', '.join(missing)} not in the artifact: they run on torch"


def placement(family: Family, core: Any) -> dict[str, str]:
    """Which engine runs each of the family's graphs."""
    where = getattr(core, "where", None)
    return where() if callable(where) else {graph: core.engine for graph in family.graphs}
