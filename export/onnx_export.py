"""Exporting one variant to ONNX: graphs, optional fusions and int8, parity, manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifacts import (
    GraphInfo,
    Manifest,
    TensorInfo,
    artifact_dir,
    weights_sha256,
    write_manifest,
)
from engines.base import Family, LoadRequest, OnnxGraph, Pipeline, VariantSpec
from engines.checkpoints import resolve_checkpoint
from export.attention import fused_attention
from export.parity import ParityError, ReferenceRuns, compare, exporter, reference_runs

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Attributes:
        out: Artifacts root (``VISION_API_ARTIFACTS_DIR``).
        opset: ONNX opset.
        fp16: Also write an fp16 artifact (for GPU providers).
        quantize: ``int8`` to also write a dynamically quantised CPU artifact.
        optimize: Export plain attention as ONNX Runtime's fused ``MultiHeadAttention``
            (:mod:`export.attention`) and apply its transformer fusions where they keep
            parity.
        images: Photos the parity check runs on.
        threads: torch / ORT threads during export and checks.
    """

    out: Path
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    quantize: str | None = None
    optimize: bool = True
    images: Sequence[Path] = ()
    threads: int = 0


def graph_module(
    owner: Any, fn: Callable[..., Mapping[str, Any]], inputs: list[str], outputs: list[str]
) -> Any:
    """An ``nn.Module`` running a core graph function: positional inputs, tuple outputs.

    ``owner`` (the module the function closes over) is registered as a submodule so that the
    tracer sees its weights as parameters rather than constants.
    """
    import torch

    class GraphModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.owner = owner.requires_grad_(False)

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = fn(**dict(zip(inputs, args, strict=True)))
            return tuple(result[name] for name in outputs)

    return GraphModule()


def export_variant(
    family: Family, spec: VariantSpec, options: ExportOptions, hf_token: str | None = None
) -> list[Path]:
    """Export ``spec`` of ``family``; return the manifests written (fp32 first).

    Raises:
        ParityError: A parity gate failed; nothing usable is left behind for that precision.
    """
    import torch

    export = exporter(family)
    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    checkpoint = resolve_checkpoint(spec.source, hf_token)
    request = LoadRequest(spec, "cpu", "float32", threads, hf_token)
    torch_pipeline = family.load_torch(request)
    graphs = export.graphs(torch_pipeline)
    weights = weights_sha256(checkpoint)
    directory = artifact_dir(options.out, family.name, spec.name, "fp32")
    _fresh(directory)
    notes = [note for graph in graphs for note in _trace(torch_pipeline, graph, directory, options)]
    # The torch model is released before ONNX Runtime builds any session (memory: full-size
    # SAM3 is 3.4 GB of weights, its ORT graphs as much again plus their activations).
    torch_pipeline.core.close()
    del torch_pipeline
    gc.collect()
    infos = []
    for graph in graphs:
        info, note = _finish(graph, directory, options)
        infos.append(info)
        notes += note
    manifest = Manifest(
        model_type=family.name,
        variant=spec.name,
        source=spec.source,
        weights_sha256=weights,
        precision="fp32",
        graphs=infos,
        opset=options.opset,
        exporter="torch.onnx (legacy TorchScript exporter, dynamo=False)",
        versions=_versions(),
        parity={},
        gates={k: f"{op} {v}" for k, (op, v) in export.parity_gates.items()},
        created_at=datetime.now(UTC).isoformat(),
        notes=notes,
    )
    del graphs
    expected, reference_note = _reference_results(family, request, options.images)
    manifest.notes.append(reference_note)
    written = [_checked(family, request, expected, directory, manifest, enforce=True)]
    derived = []
    if options.quantize == "int8":
        derived.append(("int8", _quantize_int8))
    if options.fp16:
        derived.append(("fp16", _to_fp16))
    for precision, convert in derived:
        target = artifact_dir(options.out, family.name, spec.name, precision)
        _fresh(target)
        for info in infos:
            convert(directory / info.file, target / info.file)
        copy = msgspec_replace(
            manifest,
            precision=precision,
            notes=[*notes, f"derived from the fp32 artifact by {convert.__name__.strip('_')}"],
        )
        # Derived precisions record their drift against torch; only non-finite outputs fail.
        written.append(_checked(family, request, expected, target, copy, enforce=False))
    return written


def _reference_results(
    family: Family, request: LoadRequest, images: Sequence[Path]
) -> tuple[ReferenceRuns, str]:
    """The torch results parity is measured against, float64 where the family runs in it.

    float32 torch is itself only an approximation (on random weights it drifts ~1e-3 from
    float64 where a LayerNorm sees a near-constant vector); against float64 the gates measure
    the ONNX graph's own error instead of the sum of two runtimes' rounding. The reference is
    released before any ONNX session is built (memory: see :class:`ReferenceRuns`).
    """
    try:
        pipeline = family.load_torch(dataclasses.replace(request, dtype="float64"))
        pipeline.warmup()
        note = "parity reference: torch float64"
    except Exception as exc:
        log.info("float64 reference unavailable for %s (%s); using float32", family.name, exc)
        pipeline, note = family.load_torch(request), f"parity reference: torch float32 ({exc})"
    try:
        return reference_runs(family, pipeline, images), note
    finally:
        pipeline.core.close()
        del pipeline
        gc.collect()


def _checked(
    family: Family,
    request: LoadRequest,
    expected: ReferenceRuns,
    directory: Path,
    manifest: Manifest,
    *,
    enforce: bool,
) -> Path:
    from engines.onnx_runtime import OrtCore, OrtOptions

    core = OrtCore(directory, manifest, OrtOptions(intra_op_threads=request.torch_threads))
    onnx_pipeline = family.load_onnx(request, core)
    try:
        parity = compare(family, expected, onnx_pipeline, enforce_gates=enforce)
    except ParityError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        core.close()
    return write_manifest(directory, msgspec_replace(manifest, parity=parity))


def _trace(
    pipeline: Pipeline[Any], graph: OnnxGraph, directory: Path, options: ExportOptions
) -> list[str]:
    """Write ``graph`` as ``<name>.onnx`` (legacy exporter); return notes for the manifest."""
    import torch

    core = pipeline.core
    fn = core.graphs[graph.name]  # type: ignore[attr-defined]
    names = list(graph.inputs)
    module = graph_module(core.module, fn, names, graph.outputs)  # type: ignore[attr-defined]
    # np.asarray keeps 0-d inputs (scalars) 0-d; np.ascontiguousarray would make them 1-d.
    args = tuple(torch.from_numpy(np.asarray(graph.inputs[n], order="C")) for n in names)
    path = directory / f"{graph.name}.onnx"
    attention = fused_attention() if options.optimize else contextlib.nullcontext([0])
    # not inference_mode: inference tensors cannot be exported
    with torch.no_grad(), attention as fused:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=graph.outputs,
            dynamic_axes=graph.dynamic_axes,
            opset_version=options.opset,
            do_constant_folding=True,
        )
    if fused[0]:
        return [f"{graph.name}: {fused[0]} attention calls as MultiHeadAttention"]
    return []


def _finish(
    graph: OnnxGraph, directory: Path, options: ExportOptions
) -> tuple[GraphInfo, list[str]]:
    """Apply the transformer fusions to a written graph (if asked); describe it."""
    import onnx

    path = directory / f"{graph.name}.onnx"
    notes = []
    optimized = False
    if options.optimize:
        optimized, note = _optimize(path, graph, options)
        notes.append(note)
    model = onnx.load(str(path), load_external_data=False)
    info = GraphInfo(
        name=graph.name,
        file=path.name,
        inputs=[_tensor_info(v) for v in model.graph.input],
        outputs=[_tensor_info(v) for v in model.graph.output],
        optimized=optimized,
    )
    return info, notes


def _optimize(path: Path, graph: OnnxGraph, options: ExportOptions) -> tuple[bool, str]:
    """Apply ONNX Runtime's transformer fusions (attention, LayerNorm, GELU).

    The fused graph replaces the plain one only if its outputs stay within 1e-4 of the plain
    graph's on the example inputs.
    """
    import onnxruntime as ort
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusions_wanted = FusionOptions("vit")
    # Measured on the CPU provider: DINOv3's 24 SkipLayerNormalization nodes took 7.2 ms where
    # the residual Add + LayerNormalization they replace took ~2.7 ms (ORT 1.32).
    fusions_wanted.enable_skip_layer_norm = False
    fusions_wanted.enable_bias_skip_layer_norm = False
    try:
        optimized = optimize_model(
            str(path),
            model_type="vit",
            num_heads=0,
            hidden_size=0,
            optimization_options=fusions_wanted,
            opt_level=0,
            only_onnxruntime=False,
        )
        candidate = path.with_suffix(".opt.onnx")
        optimized.save_model_to_file(str(candidate))
        fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        del optimized
    except Exception as exc:  # the optimiser does not know every graph
        return False, f"{graph.name}: transformer optimiser skipped ({type(exc).__name__})"

    def outputs(model: Path) -> list[np.ndarray]:  # one session in memory at a time
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feed = {i.name: graph.inputs[i.name] for i in session.get_inputs()}
        return session.run(None, feed)

    plain = outputs(path)
    gc.collect()
    worst = max(
        float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
        for a, b in zip(plain, outputs(candidate), strict=True)
        if a.dtype.kind == "f"
    )
    del plain
    if worst <= 1e-4:
        candidate.replace(path)
        return True, f"{graph.name}: fused {fusions or 'nothing'} (max abs diff {worst:.2e})"
    candidate.unlink()
    return False, f"{graph.name}: fusions dropped, max abs diff {worst:.2e} > 1e-4"


def _quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Matrix products only: ORT's ConvInteger has no fast kernel (DINOv3's patch embedding
    # took 4.3 ms as ConvInteger against 0.8 ms in float32). Fused contrib ops defeat ONNX
    # shape inference; their outputs are float.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def _tensor_info(value: Any) -> TensorInfo:
    import onnx

    tensor = value.type.tensor_type
    shape: list[int | str] = [
        d.dim_param or d.dim_value if d.dim_param or d.dim_value else "?" for d in tensor.shape.dim
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return TensorInfo(name=value.name, dtype=dtype, shape=shape)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _fresh(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def msgspec_replace(manifest: Manifest, **changes: Any) -> Manifest:
    """A copy of ``manifest`` with some fields changed."""
    import msgspec

    return msgspec.structs.replace(manifest, **changes)
