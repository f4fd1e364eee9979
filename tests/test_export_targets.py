"""Targets and passes: FP16 graphs, opsets and exporters, the TensorRT bundle, per-target model preparation,
and the specific errors for what a target cannot take."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import edgecnn
from edgecnn.errors import UserError
from edgecnn.export import ExportError, Pipeline, export_model, export_registered, read_manifest, runtime
from edgecnn.export import tensorrt
from edgecnn.export.pipeline import CheckParity, FoldBatchNorm, WriteTarget
from edgecnn.zoo.deformable import set_deform_lowering

MODEL = "lenet5_fmnist"


def _onnx(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path / "model.onnx"))


def test_fp16_onnx_has_half_weights_and_float32_ends(tmp_path: Path) -> None:
    m = export_registered("resnet18_fmnist", "onnx", "fp16", tmp_path / "a").manifest
    graph = _onnx(tmp_path / "a").graph
    weights = [i for i in graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m["input"]["dtype"] == "float32" and m["parity"][0]["top1_agreement"] >= 0.99


def test_fp16_onnx_with_half_io(tmp_path: Path) -> None:
    m = export_registered(MODEL, "onnx", "fp16", tmp_path / "a", keep_io_types=False).manifest
    assert m["input"]["dtype"] == m["output"]["dtype"] == "float16" and m["parity"][0]["passed"]
    with runtime.load(tmp_path / "a") as session:
        assert session.run(np.zeros((1, 1, 28, 28), np.float16)).dtype == np.float16
        with pytest.raises(UserError, match="float32; the model takes float16"):
            session.run(np.zeros((1, 1, 28, 28), np.float32))


def test_openvino_fp16_compresses_weights(tmp_path: Path) -> None:
    fp32 = export_registered("resnet18_fmnist", "openvino", "fp32", tmp_path / "32", parity_samples=16).manifest
    fp16 = export_registered("resnet18_fmnist", "openvino", "fp16", tmp_path / "16").manifest
    assert fp16["files"]["model.bin"]["bytes"] < 0.6 * fp32["files"]["model.bin"]["bytes"]
    assert fp16["target_info"]["compressed_to_fp16"] and fp16["parity"][0]["passed"]


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("auto", 19), ("dynamo", 18)])
def test_exporters_and_opsets(tmp_path: Path, exporter: str, opset: int) -> None:
    m = export_registered(MODEL, "onnx", "fp32", tmp_path / "a", exporter=exporter, opset=opset,
                          dynamic_batch=True, parity_samples=16).manifest
    model = _onnx(tmp_path / "a")
    assert model.opset_import[0].version == opset == m["target_info"]["onnx"]["opset"]
    assert m["target_info"]["onnx"]["exporter"] == ("torchscript" if exporter == "auto" else exporter)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m["input"]["shape"] == ["batch", 1, 28, 28] and m["parity"][0]["passed"]


@pytest.mark.parametrize("kwargs,message", [
    ({"opset": 16}, "opset 16 is outside"),
    ({"exporter": "dynamo", "opset": 17}, "opset 17 is outside what the dynamo exporter writes"),
    ({"exporter": "jit"}, "unknown ONNX exporter"),
    ({"target": "tflite"}, "unknown target 'tflite'; choose one of onnx, openvino, tensorrt"),
    ({"precision": "int4"}, "target 'onnx' exports precisions fp32, fp16, int8, not 'int4'"),
    ({"batch": 0}, "at least 1"),
    ({"target": "openvino", "precision": "fp16", "keep_io_types": False}, "apply to FP16 ONNX only"),
])
def test_bad_export_options_are_user_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"target": "onnx", "precision": "fp32", **kwargs}
    with pytest.raises(UserError, match=message):
        export_registered(MODEL, out=tmp_path / "a", **args)


def test_model_without_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ModelConfig"):
        export_model(nn.Conv2d(1, 1, 3), "onnx", "fp32", tmp_path / "a")


def test_tensorrt_bundle_without_tensorrt(tmp_path: Path) -> None:
    out = tmp_path / "trt"
    m = export_registered(MODEL, "tensorrt", "fp16", out, dynamic_batch=True, parity_samples=16).manifest
    if tensorrt.engine_buildable_here()[0]:
        pytest.skip("TensorRT and a GPU are present: the engine is built (see test_tensorrt_engine_builds)")
    # model_fp16.onnx: the strongly typed graph TensorRT 10.12+ builds; model.onnx for 10.3-10.11
    assert set(m["files"]) == {"model.onnx", "model_fp16.onnx", "build_engine.py", "build_engine.sh"}
    info = m["target_info"]
    assert info["engine_built"] is False and info["engine_not_built_because"] and info["unsupported_ops"] == []
    assert any("no TensorRT engine was built" in n for n in m["notes"])
    assert m["parity"][0]["backend"] == "onnxruntime" and m["parity"][0]["passed"]
    script = (out / "build_engine.sh").read_text()
    for flag in ("trtexec", "--onnx=model.onnx --fp16", "--onnx=model_fp16.onnx --stronglyTyped", "--saveEngine=model.plan",
                 "--minShapes=input:${MIN_BATCH}x1x28x28", "--maxShapes=input:${MAX_BATCH}x1x28x28", "MAX_BATCH=${MAX_BATCH:-32}"):
        assert flag in script
    help_text = subprocess.run([sys.executable, str(out / "build_engine.py"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--workspace-mib" in help_text and "--dla-core" in help_text and "--max-batch" in help_text


class _Det(nn.Module):
    """A graph with an operator TensorRT's ONNX parser lacks (Det)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)[:, :, :2, :2]
        return torch.linalg.det(y).reshape(x.shape[0], 4)


def test_tensorrt_rejects_unsupported_ops_specifically(tmp_path: Path) -> None:
    assert tensorrt.unsupported_ops({"Conv": 1, "Det": 1, "Relu": 2}) == ["Det"]
    model = _Det()
    model.config = edgecnn.get_config(MODEL)
    with pytest.raises(ExportError, match="TensorRT's ONNX parser does not support Det"):
        export_model(model, "tensorrt", "fp32", tmp_path / "a", input_size=(6, 6))
    assert not (tmp_path / "a").exists()


def test_deformable_layers_prepare_per_target(tmp_path: Path) -> None:
    onnx_m = export_registered("deform_resnet_fmnist", "onnx", "fp32", tmp_path / "o", parity_samples=16).manifest
    ov_m = export_registered("deform_resnet_fmnist", "openvino", "fp32", tmp_path / "v", parity_samples=16).manifest
    assert "DeformConv" in onnx_m["target_info"]["onnx"]["ops"]
    assert "DeformConv" not in ov_m["target_info"]["onnx"]["ops"] and "GridSample" in ov_m["target_info"]["onnx"]["ops"]
    assert onnx_m["passes"][0]["modules_prepared"] == ov_m["passes"][0]["modules_prepared"] > 0
    assert onnx_m["parity"][0]["passed"] and ov_m["parity"][0]["passed"]


def test_openvino_says_why_it_cannot_take_deformconv(tmp_path: Path) -> None:
    """A pipeline without the preparation pass keeps the native DeformConv node: a specific error."""
    model = edgecnn.create_model("deform_resnet_fmnist")
    set_deform_lowering(model, "deform_conv")
    with pytest.raises(ExportError, match=r"4 DeformConv node\(s\), which the openvino target cannot run"):
        export_model(model, "openvino", "fp32", tmp_path / "a",
                     pipeline=Pipeline([FoldBatchNorm(), WriteTarget(), CheckParity()]))


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).flatten(1)
        return y, -y


def test_extra_outputs_never_reach_the_graph(tmp_path: Path) -> None:
    model = _TwoHeads()
    model.config = edgecnn.get_config(MODEL)
    with pytest.raises(ExportError, match="returns a tuple; an edgecnn model returns logits only"):
        export_model(model, "onnx", "fp32", tmp_path / "a")
    with pytest.raises(ExportError, match="2 outputs, not 1 and 1; .*logits only"):  # a custom pipeline without the fold check
        export_model(model, "onnx", "fp32", tmp_path / "a", pipeline=Pipeline([WriteTarget()]))


@pytest.mark.tensorrt
@pytest.mark.skipif(not tensorrt.engine_buildable_here()[0], reason="needs tensorrt and a CUDA GPU")
def test_tensorrt_engine_builds_and_runs(tmp_path: Path) -> None:
    m = export_registered(MODEL, "tensorrt", "fp16", tmp_path / "trt", parity_samples=16).manifest
    assert m["target_info"]["engine_built"] and "model.plan" in m["files"]
    assert m["parity"][0]["backend"] == "tensorrt" and m["parity"][0]["passed"]
    assert read_manifest(tmp_path / "trt")["default_backend"] == "tensorrt"


def test_build_engine_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    if tensorrt.engine_buildable_here()[0] or _tensorrt_importable():
        pytest.skip("tensorrt is installed here")
    out = tmp_path / "trt"
    export_registered(MODEL, "tensorrt", "fp16", out, parity_samples=8)
    run = subprocess.run([sys.executable, str(out / "build_engine.py")], capture_output=True, text=True)
    assert run.returncode != 0 and not (out / "model.plan").exists()
    assert "pip install 'tensorrt>=10.3,<12'" in run.stderr and "JetPack" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_tensorrt_target_of_a_deformable_model(tmp_path: Path) -> None:
    """TensorRT gets the GridSample + Conv lowering (no DeformConv plugin needed), checked op by op."""
    m = export_registered("deform_resnet_fmnist", "tensorrt", "fp32", tmp_path / "trt", parity_samples=16).manifest
    ops = m["target_info"]["onnx"]["ops"]
    assert "DeformConv" not in ops and "GridSample" in ops and m["target_info"]["unsupported_ops"] == []
    assert not tensorrt.unsupported_ops(ops) and m["passes"][0]["modules_prepared"] > 0
    assert m["parity"][0]["passed"]
