"""Exporting one variant to ONNX: graphs, optional fusions and int8, parity, manifest."""

from __future__ import annotations

import dataclasses
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
from export.parity import ParityError, check_parity

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
        optimize: Apply ONNX Runtime's transformer fusions where they keep parity.
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

    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    checkpoint = resolve_checkpoint(spec.source, hf_token)
    request = LoadRequest(spec, "cpu", "float32", threads, hf_token)
    torch_pipeline = family.load_torch(request)
    graphs = family.onnx_graphs(torch_pipeline)
    weights = weights_sha256(checkpoint)
    directory = artifact_dir(options.out, family.name, spec.name, "fp32")
    _fresh(directory)
    infos, notes = [], []
    for graph in graphs:
        info, note = _export_graph(torch_pipeline, graph, directory, options)
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
        gates={k: f"{op} {v}" for k, (op, v) in family.parity_gates.items()},
        created_at=datetime.now(UTC).isoformat(),
        notes=notes,
    )
    torch_pipeline.core.close()
    reference, reference_note = _reference_pipeline(family, request)
    manifest.notes.append(reference_note)
    written = [_checked(family, request, reference, directory, manifest, options, enforce=True)]
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
        written.append(_checked(family, request, reference, target, copy, options, enforce=False))
    reference.core.close()
    return written


def _reference_pipeline(family: Family, request: LoadRequest) -> tuple[Pipeline[Any], str]:
    """The torch pipeline parity is measured against: float64 where the family runs in it.

    float32 torch is itself only an approximation (on random weights it drifts ~1e-3 from
    float64 where a LayerNorm sees a near-constant vector); against float64 the gates measure
    the ONNX graph's own error instead of the sum of two runtimes' rounding.
    """
    try:
        pipeline = family.load_torch(dataclasses.replace(request, dtype="float64"))
        pipeline.warmup()
        return pipeline, "parity reference: torch float64"
    except Exception as exc:
        log.info("float64 reference unavailable for %s (%s); using float32", family.name, exc)
        return family.load_torch(request), f"parity reference: torch float32 ({exc})"


def _checked(
    family: Family,
    request: LoadRequest,
    torch_pipeline: Pipeline[Any],
    directory: Path,
    manifest: Manifest,
    options: ExportOptions,
    *,
    enforce: bool,
) -> Path:
    from engines.onnx_runtime import OrtCore, OrtOptions

    core = OrtCore(directory, manifest, OrtOptions(intra_op_threads=request.torch_threads))
    onnx_pipeline = family.load_onnx(request, core)
    try:
        parity = check_parity(
            family, torch_pipeline, onnx_pipeline, options.images, enforce_gates=enforce
        )
    except ParityError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        core.close()
    return write_manifest(directory, msgspec_replace(manifest, parity=parity))


def _export_graph(
    pipeline: Pipeline[Any], graph: OnnxGraph, directory: Path, options: ExportOptions
) -> tuple[GraphInfo, list[str]]:
    import onnx
    import torch

    core = pipeline.core
    fn = core.graphs[graph.name]  # type: ignore[attr-defined]
    names = list(graph.inputs)
    module = graph_module(core.module, fn, names, graph.outputs)  # type: ignore[attr-defined]
    args = tuple(torch.from_numpy(np.ascontiguousarray(graph.inputs[n])) for n in names)
    path = directory / f"{graph.name}.onnx"
    with torch.no_grad():  # not inference_mode: inference tensors cannot be exported
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
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(path),
            model_type="vit",
            num_heads=0,
            hidden_size=0,
            opt_level=0,
            only_onnxruntime=False,
        )
        candidate = path.with_suffix(".opt.onnx")
        optimized.save_model_to_file(str(candidate))
    except Exception as exc:  # the optimiser does not know every graph
        return False, f"{graph.name}: transformer optimiser skipped ({type(exc).__name__})"
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    feed = {i.name: graph.inputs[i.name] for i in plain.get_inputs()}
    worst = max(
        float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
        for a, b in zip(plain.run(None, feed), fused.run(None, feed), strict=True)
        if a.dtype.kind == "f"
    )
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if worst <= 1e-4:
        candidate.replace(path)
        return True, f"{graph.name}: fused {fusions or 'nothing'} (max abs diff {worst:.2e})"
    candidate.unlink()
    return False, f"{graph.name}: fusions dropped, max abs diff {worst:.2e} > 1e-4"


def _quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused contrib ops defeat ONNX shape inference; their outputs are float.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
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

