"""Loading one variant: which runtime, which providers, which precision, then warm-up.

The pool decides *when* a variant is loaded and keeps it resident; this module decides *how*:
ONNX Runtime from an exported artifact when one matches the checkpoint (graphs the artifact
lacks run on torch), torch otherwise, and the reason for any fallback.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.artifacts import Manifest
from engines.base import Core, Family, LoadRequest, Pipeline, VariantSpec, run_pipeline
from engines.devices import cpu_bf16_units, resolve_dtype
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
        onnx_precision: The artifact precision to serve (``auto``, ``fp32``, ``fp16``,
            ``int8``; see :func:`~engines.artifacts.precision_order`).
        ort_providers: ONNX Runtime providers in order of preference.
        ort_optimization: ONNX Runtime's graph optimisation level.
        cpu_bf16: With ``dtype`` auto on CPU, whether to try bf16 weights: ``auto`` where the
            CPU has bf16 matrix units, ``check`` always (the check still decides), ``off``.
        image_cache_mb: Per-image cache budget of families that keep one (see ``LoadRequest``).
        image_cache_ttl_s: Seconds an unused entry of that cache is kept.
        uint8_resize: See ``LoadRequest``.
    """

    dtype: str = "auto"
    threads: int = 1
    hf_token: str | None = None
    artifacts_dir: Path | None = None
    onnx_precision: str = "auto"
    ort_providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    ort_optimization: str = "all"
    cpu_bf16: str = "auto"
    image_cache_mb: float | None = 0.0
    image_cache_ttl_s: float = 600.0
    uint8_resize: bool = True


@dataclass(frozen=True)
class Loaded:
    """A loaded pipeline and how it was loaded."""

    pipeline: Pipeline[Any]
    engine: str
    dtype: str
    memory_mb: float
    dtype_reason: str | None = None
    fallback_reason: str | None = None
    placement: dict[str, str] = field(default_factory=dict)
    check_bf16: bool = False
    request: LoadRequest | None = None


class ModelLoader:
    """Loads variants of families according to a :class:`LoaderConfig` (blocking calls).

    Args:
        config: Runtime, precision and artifact settings.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config

    def load(
        self, family: Family, spec: VariantSpec, device: str, engine: str, *, warm: bool = True
    ) -> Loaded:
        """Load ``spec`` of ``family`` on ``device`` with ``engine``; warm it up if ``warm``.

        The pool loads with ``warm=False`` on a helper thread and calls :meth:`warm_up` on the
        compute thread, whose thread set-up the forwards will use.

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
        forced_reason = None
        if dtype == "bfloat16" and device == "cpu" and not family.precision_gates:
            # A family without a bf16 check runs float32 on CPU even when bf16 is configured:
            # GroundingDINO's bf16 logits are NaN on CPU in transformers' own model.
            dtype = "float32"
            forced_reason = (
                f"float32: bfloat16 configured, but {family.name} has no bf16 check on CPU "
                "(its bf16 results there are not trusted)"
            )
        request = LoadRequest(
            spec,
            device,
            dtype,
            self.config.threads,
            self.config.hf_token,
            image_cache_mb=self.config.image_cache_mb,
            image_cache_ttl_s=self.config.image_cache_ttl_s,
            uint8_resize=self.config.uint8_resize,
        )
        started = time.perf_counter()
        with load_errors(label, spec.source):
            pipeline, fallback_reason, dtype_reason = None, None, None
            if engine in ("auto", "onnx"):
                pipeline, fallback_reason, dtype_reason = self._load_onnx(
                    family, request, engine == "onnx"
                )
            if pipeline is None:
                pipeline = family.load_torch(request)
                dtype_reason = forced_reason or torch_dtype_reason(self.config.dtype, dtype, device)
        engine_used = pipeline.core.engine
        check_bf16 = False
        if self.config.dtype == "auto" and device == "cpu":
            if engine_used == "torch":
                check_bf16, dtype_reason = self._bf16_candidate(family)
            elif engine == "auto":
                # An artifact under auto races torch bf16 too: on a CPU with bf16 units the
                # bf16 forward can beat ONNX Runtime's float32 one (DINOv3: 24 vs 16 img/s).
                check_bf16 = self._bf16_candidate(family)[0]
        log.info(
            "loaded %s on %s (%s, %s) in %.1f s",
            label,
            device,
            engine_used,
            dtype,
            time.perf_counter() - started,
        )
        precision = getattr(pipeline.core, "precision", self.config.onnx_precision)
        loaded = Loaded(
            pipeline=pipeline,
            engine=engine_used,
            dtype=dtype if engine_used == "torch" else precision,
            dtype_reason=dtype_reason,
            memory_mb=round(pipeline.core.memory_bytes() / 2**20, 1),
            fallback_reason=fallback_reason,
            placement=placement(family, pipeline.core),
            check_bf16=check_bf16,
            request=request,
        )
        return self.warm_up(family, request, loaded) if warm else loaded

    def warm_up(self, family: Family, request: LoadRequest | None, loaded: Loaded) -> Loaded:
        """Warm the pipeline up, then run the bf16 check where :meth:`load` asked for it.

        ONNX Runtime warms up twice (it needs a couple of runs). Returns the model to serve.

        Raises:
            UnavailableError: Not enough (GPU) memory.
            InferenceError: The warm-up failed (detail without internals).
        """
        request = request or loaded.request
        assert request is not None
        spec = request.spec
        with load_errors(f"{family.name}/{spec.name}", spec.source):
            for _ in range(1 if loaded.engine == "torch" else 2):
                loaded.pipeline.warmup()
            if loaded.check_bf16:
                return choose_cpu_precision(family, request, loaded)
        return loaded

    def _bf16_candidate(self, family: Family) -> tuple[bool, str]:
        """Whether to check bf16 weights for ``family`` on this CPU, and the reason if not."""
        if not family.precision_gates:
            return False, "float32: auto on CPU (this family has no bf16 check)"
        if self.config.cpu_bf16 == "off":
            return False, "float32: auto on CPU (bf16 check off)"
        if self.config.cpu_bf16 == "auto" and not cpu_bf16_units():
            return False, "float32: auto on CPU; no bf16 matrix units here (AVX-512 BF16, AMX)"
        return True, "float32: bf16 check pending"

    def _load_onnx(
        self, family: Family, request: LoadRequest, explicit: bool
    ) -> tuple[Pipeline[Any] | None, str | None, str | None]:
        """The pipeline on ONNX Runtime, why anything fell back, and why this precision.

        ``(None, reason, None)`` means: fall back to torch.

        A graph the artifact lacks runs on torch (a hybrid core); a session that fails to build
        falls back to torch entirely, with the reason logged and reported in the status.
        """
        spec = request.spec
        if not family.serves_onnx:
            unsupported = f"{family.name} has no ONNX Runtime support yet"
            if explicit:
                raise NotFoundError(f"{unsupported}; load it with engine 'torch'.")
            return None, unsupported, None
        manifest, directory, reason = self._artifact(family, request)
        if manifest is None:
            if explicit:
                raise NotFoundError(
                    f"No usable ONNX artifact for {family.name}/{spec.name}: {reason}. Create one "
                    f"with `vision-api export {family.name} --variant {spec.name}`, or load with "
                    "engine 'torch'."
                )
            return None, reason, None
        precision_note = f"ONNX {manifest.precision} artifact" + (
            f" (passed over: {reason})" if reason else ""
        )
        try:
            core, hybrid_reason = self._ort_core(family, request, directory, manifest)
            return family.load_onnx(request, core), hybrid_reason, precision_note
        except VisionError:
            raise
        except Exception as exc:
            log.warning(
                "ONNX Runtime failed for %s/%s, falling back to torch",
                family.name,
                spec.name,
                exc_info=True,
            )
            failed = f"ONNX Runtime failed ({type(exc).__name__}); the server log has why"
            return None, failed, None

    def _artifact(
        self, family: Family, request: LoadRequest
    ) -> tuple[Manifest | None, Path, str | None]:
        """The artifact to serve, of the configured precision or the best that passed.

        With ``auto``, the first of :func:`~engines.artifacts.precision_order` whose recorded
        parity passed its gates.

        Returns:
            ``(manifest, directory, why others were passed over or None)``, or
            ``(None, directory, why there is none)``.
        """
        from engines.artifacts import (
            find_artifact,
            manifest_gates_failed,
            precision_order,
            weights_sha256,
        )
        from engines.checkpoints import resolve_checkpoint

        spec = request.spec
        order = precision_order(self.config.onnx_precision, request.device)
        weights: str | None = None
        passed_over: list[str] = []
        directory = Path()
        for precision in order:
            manifest, directory, reason = find_artifact(
                self.config.artifacts_dir, family.name, spec.name, None, precision
            )
            if manifest is not None:
                weights = weights or weights_sha256(
                    resolve_checkpoint(spec.source, request.hf_token)
                )
                if manifest.weights_sha256 != weights:
                    reason = (
                        f"the artifact in {directory} was exported from other weights "
                        f"({manifest.weights_sha256[:12]} != {weights[:12]}); export it again"
                    )
                    manifest = None
            if manifest is not None and len(order) > 1 and precision != order[-1]:
                failed = manifest_gates_failed(manifest)
                if failed:
                    manifest, reason = None, f"its parity fails the gates ({'; '.join(failed)})"
            if manifest is not None:
                note = "; ".join(passed_over) if passed_over else None
                return manifest, directory, note
            passed_over.append(f"{precision}: {reason}")
        return None, directory, "; ".join(passed_over) if len(order) > 1 else reason

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


@contextmanager
def load_errors(label: str, source: str) -> Iterator[None]:
    """Map what loading raises to domain errors: 503 for memory, else a 500 without internals."""
    try:
        yield
    except VisionError:
        raise
    except MemoryError:
        raise UnavailableError(
            f"Not enough memory to load {label}; unload other models first.", retry_after_s=30
        ) from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise UnavailableError(
                f"Not enough GPU memory to load {label}; unload other models or use a smaller "
                "variant.",
                retry_after_s=30,
            ) from None
        log.exception("loading %s from %s failed", label, source)
        raise InferenceError(
            f"Could not load {label} from {source} ({type(exc).__name__}); the server log has "
            "the details."
        ) from exc


def torch_dtype_reason(configured: str, dtype: str, device: str) -> str:
    """Why a torch model runs in ``dtype`` (shown in ``/models/status``)."""
    if configured != "auto":
        return f"{dtype}: configured"
    if device.startswith("cuda"):
        return f"{dtype}: auto on CUDA (half precision: same speed as bf16, less drift)"
    return f"{dtype}: auto on CPU"


ASSETS = Path(__file__).parent / "assets"


def choose_cpu_precision(family: Family, request: LoadRequest, loaded: Loaded) -> Loaded:
    """Keep bf16 torch weights instead of what was loaded if they pass the gate and run faster.

    What was loaded is float32 torch weights, or (``engine: auto`` only) an ONNX artifact:
    bf16 is gated against its results and must beat its time. Both are measured here on the
    family's check photos and options; the copy not kept is released. The two are timed
    alternately (the faster of two runs each), on the calling thread: the pool calls this on
    its compute thread, whose thread set-up the forwards use. Caches are emptied before each
    run (every run does the whole work) and after the check.
    """
    from PIL import Image

    from engines.artifacts import failed_gates

    images = [Image.open(ASSETS / name).convert("RGB") for name in family.precision_photos]
    options = family.precision_options()
    onnx = loaded.engine != "torch"
    candidate: Pipeline[Any] | None = None
    loaded_ms: list[float] = []
    bf16_ms: list[float] = []
    try:
        candidate = family.load_torch(dataclasses.replace(request, dtype="bfloat16"))
        candidate.warmup()
        reference = _timed(loaded.pipeline, images, options, loaded_ms)
        results = _timed(candidate, images, options, bf16_ms)
        _timed(loaded.pipeline, images, options, loaded_ms)
        _timed(candidate, images, options, bf16_ms)
        metrics = family.precision_metrics(reference, results)
    except Exception as exc:  # a kernel without bf16 support, say: serve what was loaded
        log.warning("%s/%s: the bf16 check failed", family.name, request.spec.name, exc_info=True)
        if candidate is not None:
            candidate.close()
        failed_check = f"the bf16 check failed ({type(exc).__name__}; the server log has why)"
        reason = f"{loaded.dtype_reason}; {failed_check}" if onnx else f"float32: {failed_check}"
        return dataclasses.replace(loaded, dtype_reason=reason, check_bf16=False)
    except BaseException:
        if candidate is not None:
            candidate.close()
        raise
    finally:
        loaded.pipeline.reset_caches()
        if candidate is not None:
            candidate.reset_caches()
    figures = ", ".join(f"{k} {v:.6g}" for k, v in metrics.items())
    against = f"ONNX {loaded.dtype} " if onnx else ""
    timing = f"{min(bf16_ms):.0f} vs {against}{min(loaded_ms):.0f} ms on {len(images)} photos"
    failed = failed_gates(family.precision_gates, metrics)
    if failed or min(bf16_ms) >= min(loaded_ms):
        candidate.close()
        why = f"failed its gate ({'; '.join(failed)})" if failed else f"was not faster ({timing})"
        reason = f"{loaded.dtype_reason}; torch bf16 {why}" if onnx else f"float32: bf16 {why}"
        log.info("%s/%s: %s", family.name, request.spec.name, reason)
        return dataclasses.replace(loaded, dtype_reason=reason, check_bf16=False)
    loaded.pipeline.close()
    reason = f"bfloat16: passed ({figures}) and faster ({timing})"
    log.info("%s/%s: %s", family.name, request.spec.name, reason)
    switched: dict[str, Any] = {}
    if onnx:  # the artifact loses the race: say so where a fallback is explained
        switched = {
            "engine": candidate.core.engine,
            "placement": placement(family, candidate.core),
            "fallback_reason": f"the ONNX {loaded.dtype} artifact: torch bf16 ran faster",
        }
    return dataclasses.replace(
        loaded,
        pipeline=candidate,
        dtype="bfloat16",
        dtype_reason=reason,
        memory_mb=round(candidate.core.memory_bytes() / 2**20, 1),
        check_bf16=False,
        **switched,
    )


def _timed(
    pipeline: Pipeline[Any], images: list[Any], options: Any, times_ms: list[float]
) -> list[dict[str, Any]]:
    """Run ``pipeline`` on ``images``; append the milliseconds it took to ``times_ms``."""
    pipeline.reset_caches()
    started = time.perf_counter()
    results = run_pipeline(pipeline, images, options)
    times_ms.append((time.perf_counter() - started) * 1e3)
    return results
