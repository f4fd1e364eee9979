"""The runtime without the export stage: importing it stays light, and a session opens a bare model file
(`runtime.open_model`, the loader/runner split) as well as an artifact (`runtime.load`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecnn.errors import UserError
from edgecnn.export import runtime

HEAVY = ("torch", "edgecnn.calibration", "onnxruntime.quantization", "onnx", "openvino", "nncf")


def test_importing_the_runtime_imports_neither_torch_nor_the_quantizers() -> None:
    """Every session registers (each backend module's, early exit's), yet none of the export stage's machinery loads."""
    code = ("import sys, edgecnn.export.runtime as r; "
            f"print(sorted(set({HEAVY!r}) & set(sys.modules))); print(sorted(r.BACKENDS))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, sessions = proc.stdout.splitlines()
    assert heavy == "[]"
    assert sessions == str(sorted(["early_exit", "onnxruntime", "openvino", "tensorrt", "torch"]))


def test_reading_a_manifest_and_the_backend_registry_stay_light() -> None:
    code = ("import sys; from edgecnn.export import read_manifest, ArtifactError, ExportError; "
            "from edgecnn.export.backends import BACKENDS; import edgecnn.export.staging; "
            "import edgecnn.export.early_exit_session, edgecnn.export.early_exit_thresholds; "
            "import edgecnn.export.quantizers; "
            f"print(sorted(set({HEAVY[:3]!r}) & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def _linear_onnx(path: Path, batch: int | str = "N") -> np.ndarray:
    """An ONNX graph input (batch×1×4×4) → Flatten → Gemm → logits (batch×3); returns its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weights


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_bare_model_file_opens_without_a_manifest(tmp_path: Path, backend: str) -> None:
    weights = _linear_onnx(tmp_path / "model.onnx")
    batch = np.random.default_rng(1).standard_normal((5, 1, 4, 4)).astype(np.float32)
    with runtime.open_model(tmp_path / "model.onnx", backend, threads=1) as session:
        assert session.manifest is None and session.model_format == "onnx"
        assert session.input_spec == runtime.InputSpec("input", (None, 1, 4, 4), np.dtype("float32"), "NCHW")
        np.testing.assert_allclose(session.run(batch), batch.reshape(5, 16) @ weights, rtol=1e-5, atol=1e-5)
        assert session.info()["model_file"] == "model.onnx" and session.info()["artifact_precision"] == "fp32"
        with pytest.raises(UserError, match="NHWC"):   # validated as an artifact's input is
            session.run(batch.transpose(0, 2, 3, 1))


def test_a_bare_model_file_takes_the_input_it_is_told(tmp_path: Path) -> None:
    _linear_onnx(tmp_path / "model.onnx", batch=2)
    spec = {"name": "input", "shape": [2, 1, 4, 4], "dtype": "float32"}
    with runtime.open_model(tmp_path / "model.onnx", "onnxruntime", precision="int8", input=spec) as session:
        assert session.input_spec.shape == (2, 1, 4, 4) and session.precision == "int8"
        with pytest.raises(UserError, match="exported for batch 2"):
            session.run(np.zeros((3, 1, 4, 4), np.float32))


def test_what_a_bare_model_file_cannot_be_opened_on(tmp_path: Path) -> None:
    _linear_onnx(tmp_path / "model.onnx")
    for backend in ("torch", "early_exit"):
        with pytest.raises(UserError, match="runs artifacts only"):
            runtime.open_model(tmp_path / "model.onnx", backend)
    with pytest.raises(UserError, match="reads onnx models"):
        runtime.open_model(tmp_path / "model.xml", "onnxruntime")
    with pytest.raises(UserError, match="does not exist"):
        runtime.open_model(tmp_path / "missing.onnx", "onnxruntime")
    with pytest.raises(UserError, match="unknown option 'hint'"):
        runtime.open_model(tmp_path / "model.onnx", "onnxruntime", hint="LATENCY")
    with pytest.raises(UserError, match="unknown backend"):
        runtime.open_model(tmp_path / "model.onnx", "nope")


def test_an_early_exit_artifact_runs_its_exit_loop_without_torch(tmp_path: Path) -> None:
    """The device's exit loop (stages, entropy rule, thresholds check) needs the runtime only (and onnx, with which
    reading an ONNX artifact's manifest checks its external-data locations)."""
    from edgecnn.export import export_registered

    out = export_registered("b_lenet_fmnist", "onnx", "fp32", tmp_path / "b", early_exit_form="stages").path
    code = ("import sys, numpy as np; from edgecnn.export import runtime; "
            f"s = runtime.load({str(out)!r}, backend='early_exit'); "
            "r = s.classify(np.zeros((2, *s.input_spec.shape[1:]), np.float32)); "
            f"print(r.logits.shape[0], sorted(set({HEAVY[:3]!r}) & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split(maxsplit=1) == ["2", "[]\n"]
