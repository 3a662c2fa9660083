"""OrtCore's session settings, on a one-node graph."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.artifacts import GraphInfo, Manifest, TensorInfo
from engines.onnx_runtime import OrtCore, OrtOptions


def _scale_graph(directory: Path) -> Manifest:
    """``y = x * 0.5``: a subnormal x gives a subnormal y unless subnormals are flushed."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "half"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
        str(directory / "scale.onnx"),
    )
    info = GraphInfo(
        name="scale",
        file="scale.onnx",
        inputs=[TensorInfo(name="x", dtype="float32", shape=["n"])],
        outputs=[TensorInfo(name="y", dtype="float32", shape=["n"])],
    )
    return Manifest(
        model_type="test",
        variant="scale",
        source="-",
        weights_sha256="0" * 64,
        precision="fp32",
        graphs=[info],
        opset=18,
        exporter="onnx.helper",
        versions={},
        parity={},
        gates={},
        created_at="-",
    )


@pytest.mark.parametrize("flush", [True, False])
@pytest.mark.parametrize("in_another_thread", [False, True])
def test_subnormals_are_flushed_on_the_cpu_provider_unless_disabled(
    tmp_path: Path, flush: bool, in_another_thread: bool
) -> None:
    # Built on this thread; run here or on another thread, as the server runs a session
    # on its compute thread after loading it elsewhere.
    core = OrtCore(
        tmp_path,
        _scale_graph(tmp_path),
        OrtOptions(providers=("cpu",), intra_op_threads=1, denormals_as_zero=flush),
    )
    x = np.array([1e-39, 3e-39, 1.0, -2.0], np.float32)  # two subnormals, two normals
    if in_another_thread:
        with ThreadPoolExecutor(1) as pool:
            (y,) = pool.submit(core.run, "scale", {"x": x}).result().values()
    else:
        (y,) = core.run("scale", {"x": x}).values()
    np.testing.assert_array_equal(y[2:], [0.5, -1.0])
    if flush:
        assert not y[:2].any()
    else:
        np.testing.assert_array_equal(y[:2], x[:2] * np.float32(0.5))
    core.close()


def test_torch_on_the_same_thread_keeps_subnormals_after_a_run(tmp_path: Path) -> None:
    import torch

    core = OrtCore(
        tmp_path, _scale_graph(tmp_path), OrtOptions(providers=("cpu",), intra_op_threads=1)
    )
    core.run("scale", {"x": np.ones(2, np.float32)})
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 0.5).item() != 0.0
    core.close()


def test_a_gpu_request_on_a_cpu_only_build_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    core = OrtCore(tmp_path, _scale_graph(tmp_path), OrtOptions(device="cuda:0"))
    assert core.providers == ["CPUExecutionProvider"]
    assert core.active_providers == ["CPUExecutionProvider"]
    (y,) = core.run("scale", {"x": np.array([2.0], np.float32)}).values()
    np.testing.assert_array_equal(y, [1.0])
    core.close()


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider list of onnxruntime-gpu with TensorRT (that build cannot be installed on
    this CPU machine; only the choice made from its list is tested)."""
    import onnxruntime as ort

    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)


@pytest.mark.usefixtures("gpu_build")
def test_providers_in_order_tensorrt_cuda_cpu_with_an_engine_cache_per_gpu(
    tmp_path: Path,
) -> None:
    from engines.onnx_runtime import select_providers

    chosen = select_providers(OrtOptions(device="cuda:1", trt_cache_dir=tmp_path / "trt"))
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt, cuda = chosen[0][1], chosen[1][1]  # type: ignore[index]
    assert trt["device_id"] == 1 and cuda == {"device_id": 1}
    assert trt["trt_fp16_enable"] and trt["trt_engine_cache_enable"]
    cache = Path(trt["trt_engine_cache_path"])
    # keyed by GPU and TensorRT version, created up front, under the configured root
    assert cache.parent == tmp_path / "trt" and cache.is_dir() and "-trt" in cache.name
    assert trt["trt_timing_cache_path"] == str(cache)


@pytest.mark.usefixtures("gpu_build")
def test_provider_settings_and_cpu_devices_narrow_the_choice(tmp_path: Path) -> None:
    from engines.onnx_runtime import select_providers

    without_trt = OrtOptions(device="cuda", providers=("cuda", "cpu"), trt_cache_dir=tmp_path)
    assert select_providers(without_trt) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert select_providers(OrtOptions(device="cpu", trt_cache_dir=tmp_path)) == [
        "CPUExecutionProvider"
    ]
    # a list without cpu still ends on the CPU provider when no GPU provider applies
    assert select_providers(
        OrtOptions(device="cpu", providers=("tensorrt",), trt_cache_dir=tmp_path)
    ) == ["CPUExecutionProvider"]
    assert not any(tmp_path.iterdir())  # no TensorRT cache made when TensorRT is not used


def test_intra_op_threads_stop_spinning_when_a_run_returns(tmp_path: Path) -> None:
    """So they leave the cores to the next request's decoding and pre-processing."""
    core = OrtCore(tmp_path, _scale_graph(tmp_path), OrtOptions(providers=("cpu",)))
    options = core.sessions["scale"].get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    (y,) = core.run("scale", {"x": np.ones(4, np.float32)}).values()
    np.testing.assert_array_equal(y, np.full(4, 0.5, np.float32))
    core.close()
