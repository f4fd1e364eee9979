"""Runtime sessions: one interface over torch / onnxruntime / openvino, and every input mistake is a clear
error before the runtime sees it."""
from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.errors import UserError
from edgecnn.export import export_model, export_registered, runtime
from edgecnn.export.runtime import BACKENDS, OpenVinoSession, onnx_compute_precision
from edgecnn.registry import create_model

MODEL = "resnet18_fmnist"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime")
    return {
        "dynamic_onnx": export_registered(MODEL, "onnx", "fp32", root / "dyn", dynamic_batch=True,
                                          parity_samples=8).path,
        "static_openvino": export_registered(MODEL, "openvino", "fp32", root / "ov", batch=2, parity_samples=8).path,
    }


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def test_backends_registered_in_one_place() -> None:
    """Every session is a backend module's (edgecnn.export.backends), plus early exit's loop over their stages."""
    from edgecnn.export import backends

    assert set(BACKENDS) == {s for b in backends.BACKENDS.values() for s in b.session_names} | {"early_exit"}
    assert {"torch", "onnxruntime", "openvino", "tensorrt", "early_exit"} <= set(BACKENDS)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_every_backend_agrees_with_the_reference(artifacts: dict[str, Path], backend: str) -> None:
    x = _batch(3)
    model = create_model(MODEL)  # built here, not by the torch backend: an independent reference
    load_checkpoint(model, committed_checkpoint(MODEL))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    with runtime.load(artifacts["dynamic_onnx"], backend=backend, threads=1) as session:
        got = session.run(x)
        assert session.info()["backend"] == backend
    assert got.shape == (3, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_dynamic_batch_accepts_any_batch(artifacts: dict[str, Path]) -> None:
    with runtime.load(artifacts["dynamic_onnx"]) as session:
        assert [session.run(_batch(n)).shape[0] for n in (1, 5, 7)] == [1, 5, 7]


def test_openvino_session_options(artifacts: dict[str, Path]) -> None:
    with runtime.load(artifacts["static_openvino"], threads=1, performance_hint="throughput") as session:
        info = session.info()
        assert (info["performance_hint"], info["threads"], info["inference_precision"]) == ("THROUGHPUT", 1, "f32")
        assert session.run(_batch(2)).shape == (2, 10)
    with pytest.raises(UserError, match="LATENCY or THROUGHPUT"):
        runtime.load(artifacts["static_openvino"], performance_hint="fast")


@pytest.mark.parametrize("batch,message", [
    (_batch(2).astype(np.float64), r"float64.*astype\(np.float32\)"),
    (_batch(2).transpose(0, 2, 3, 1), r"looks like NHWC.*transpose\(0, 3, 1, 2\)"),
    (_batch(1)[0], r"no batch axis.*batch\[None\]"),
    (_batch(2)[:, :, :20], "does not match the model's 2×1×28×28"),
    (_batch(2)[None], "5 dimensions"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.float64), r"float64.*batch.to\(torch.float32\)"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.bfloat16), r"bfloat16.*batch.to\(torch.float32\)"),
    ([[0.0]], "numpy array or a torch tensor, got list"),
    (_batch(3), "exported for batch 2: export with --batch 3 or --dynamic-batch"),
    (_batch(0), "input batch is empty"),
    (np.full((2, 1, 28, 28), np.nan, np.float32), r"1568 NaN and 0 infinite.*check_finite=False"),
    (np.where(np.arange(2 * 784).reshape(2, 1, 28, 28) == 900, np.inf, _batch(2)).astype(np.float32),
     r"0 NaN and 1 infinite values \(first at index \(1, 0, 4, 4\)\)"),
])
def test_bad_input_is_a_clear_error(artifacts: dict[str, Path], batch, message: str) -> None:
    with runtime.load(artifacts["static_openvino"]) as session:
        with pytest.raises(UserError, match=message) as info:
            session.run(batch)
        assert "\n" not in str(info.value)
        assert session.run(_batch(2)).shape == (2, 10), "a rejected input must leave the session usable"


def test_session_lifecycle_and_backend_errors(artifacts: dict[str, Path]) -> None:
    session = runtime.load(artifacts["dynamic_onnx"])
    session.close()
    with pytest.raises(UserError, match="closed"):
        session.run(_batch(1))
    with pytest.raises(UserError, match="unknown backend 'trt'.*onnxruntime"):
        runtime.load(artifacts["dynamic_onnx"], backend="trt")
    with pytest.raises(UserError, match="reads onnx models.*has openvino"):
        runtime.load(artifacts["static_openvino"], backend="onnxruntime")
    with pytest.raises(UserError, match="tensorrt"):
        runtime.load(artifacts["dynamic_onnx"], backend="tensorrt")


def test_torch_backend_needs_a_rebuildable_source(tmp_path: Path) -> None:
    model = create_model("lenet5_fmnist")
    path = export_model(model, "onnx", "fp32", tmp_path / "mem", parity_samples=4).path
    with runtime.load(path) as session:
        assert session.run(_batch(1)).shape == (1, 10)
    with pytest.raises(UserError, match="in-memory model"):
        runtime.load(path, backend="torch")


@pytest.mark.parametrize("options,message", [
    (dict(threads=0), "threads must be at least 1, got 0"),
    (dict(threads=-2), "threads must be at least 1, got -2"),
    (dict(threads="two"), "threads must be a whole number, got 'two'"),
    (dict(threads=2.5), "threads must be a whole number, got 2.5"),
    (dict(thread=2), "unknown option 'thread' for the onnxruntime backend; it accepts check_finite, threads"),
    (dict(performance_hint="LATENCY"), "unknown option 'performance_hint' for the onnxruntime backend"),
    (dict(check_finite="no"), "check_finite must be True or False, got 'no'"),
])
def test_bad_session_options_are_one_clear_line(artifacts: dict[str, Path], options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        runtime.load(artifacts["dynamic_onnx"], backend="onnxruntime", **options)
    assert "\n" not in str(info.value)


def test_unknown_openvino_option_lists_what_it_accepts(artifacts: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="for the openvino backend; it accepts check_finite, inference_precision, "
                                        "performance_hint, threads"):
        runtime.load(artifacts["static_openvino"], precision="bf16")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_non_finite_input_is_refused_unless_asked(artifacts: dict[str, Path], backend: str) -> None:
    nan = np.full((1, 1, 28, 28), np.nan, np.float32)
    with runtime.load(artifacts["dynamic_onnx"], backend=backend) as session:
        with pytest.raises(UserError, match="NaN"):
            session.run(nan)
        with pytest.raises(UserError, match="infinite"):
            session.run(torch.full((1, 1, 28, 28), -float("inf")))
    with runtime.load(artifacts["dynamic_onnx"], backend=backend, check_finite=False) as session:
        assert not session.info()["check_finite"]
        assert session.run(nan).shape == (1, 10)  # the runtime's own answer, whatever it is


def test_torch_tensors_run_like_numpy_arrays(artifacts: dict[str, Path]) -> None:
    x = _batch(2)
    with runtime.load(artifacts["static_openvino"]) as session:
        expected = session.run(x)
        np.testing.assert_array_equal(session.run(torch.from_numpy(x)), expected)
        np.testing.assert_array_equal(session.run(torch.from_numpy(x).requires_grad_()), expected)
        with pytest.raises(UserError, match="exported for batch 2"):
            session.run(torch.from_numpy(_batch(3)))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_fp32_artifacts_report_fp32_execution(artifacts: dict[str, Path], backend: str) -> None:
    with runtime.load(artifacts["dynamic_onnx"], backend=backend) as session:
        assert session.executed_precision == "fp32"
        assert session.info()["executed_precision"] == "fp32" and session.info()["artifact_precision"] == "fp32"


def test_fp16_artifacts_report_what_the_cpu_really_runs(tmp_path: Path) -> None:
    import onnx
    import openvino as ov

    fp16_compute = "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    ir = export_registered("lenet5_fmnist", "openvino", "fp16", tmp_path / "ov16", parity_samples=8).path
    with runtime.load(ir) as session:
        assert session.executed_precision == ("fp16" if fp16_compute else "fp32")
        assert session.info()["compiled_inference_precision"] == ("f16" if fp16_compute else "f32")
    onnx16 = export_registered("lenet5_fmnist", "onnx", "fp16", tmp_path / "onnx16", parity_samples=8).path
    assert onnx_compute_precision(onnx.load(str(onnx16 / "model.onnx")), "?") == "fp16", "the graph as written"
    with runtime.load(onnx16) as session:
        if platform.machine() in ("x86_64", "AMD64") and "avx512fp16" not in _cpu_flags():
            # no FP16 kernels in ONNX Runtime's CPU EP here: it casts the weights and computes in fp32
            assert session.executed_precision == "fp32"
        assert session.info()["artifact_precision"] == "fp16"


def test_onnx_int8_graph_is_read_as_int8(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    fp32 = export_registered("lenet5_fmnist", "onnx", "fp32", tmp_path / "fp32", parity_samples=8).path

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": _batch(1, seed)} for seed in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantized = tmp_path / "int8.onnx"
    quantize_static(str(fp32 / "model.onnx"), str(quantized), Reader(), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    assert onnx_compute_precision(onnx.load(str(tmp_path / "optimized.onnx")), "?").startswith("int8")
    assert onnx_compute_precision(onnx.load(str(quantized)), "?").startswith("fp32"), "QDQ as written: float ops"


@pytest.mark.parametrize("precision,capabilities,hint", [
    ("fp32", ["FP32", "BF16"], "f32"),
    ("int8", ["FP32", "INT8", "BF16"], "f32"),
    ("fp16", ["FP32", "FP16"], "f16"),
    ("fp16", ["FP32", "INT8"], "f32"),
    ("bf16", ["FP32", "BF16", "INT8"], "bf16"),
])
def test_openvino_hint_for_each_artifact_precision(precision: str, capabilities: list, hint: str) -> None:
    assert OpenVinoSession._default_precision(capabilities, precision) == hint


def test_openvino_bf16_is_refused_where_the_cpu_lacks_it() -> None:
    with pytest.raises(UserError, match="needs a CPU with BF16.*offers FP32, INT8: export the fp32 or int8"):
        OpenVinoSession._default_precision(["FP32", "INT8"], "bf16")


def test_openvino_bf16_on_this_cpu(artifacts: dict[str, Path]) -> None:
    """bf16 where this CPU has it (and then it really runs bf16), one clear line where it does not."""
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with runtime.load(artifacts["static_openvino"], inference_precision="bf16") as session:
            assert session.executed_precision.startswith("bf16")  # most compute layers; a few may stay fp32
            assert session.info()["inference_precision"] == "bf16"
    else:
        with pytest.raises(UserError, match="inference_precision='bf16' needs a CPU with BF16 arithmetic"):
            runtime.load(artifacts["static_openvino"], inference_precision="bf16")
    with pytest.raises(UserError, match="unknown inference_precision 'int4'; use one of f32, f16, bf16"):
        runtime.load(artifacts["static_openvino"], inference_precision="int4")


def test_torch_backend_checkpoint_gone_or_changed(tmp_path: Path) -> None:
    checkpoint = tmp_path / "lenet.safetensors"
    shutil.copy(committed_checkpoint("lenet5_fmnist"), checkpoint)
    shutil.copy(committed_checkpoint("lenet5_fmnist").with_suffix(".json"), checkpoint.with_suffix(".json"))
    path = export_registered("lenet5_fmnist", "onnx", "fp32", tmp_path / "a", checkpoint=checkpoint,
                             parity_samples=4).path
    with runtime.load(path, backend="torch") as session:
        assert session.run(_batch(1)).shape == (1, 10)
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"lenet.safetensors changed since the export \(SHA-256 differs\)"):
        runtime.load(path, backend="torch")
    checkpoint.unlink()
    with pytest.raises(UserError, match="lenet.safetensors the artifact was exported from is gone"):
        runtime.load(path, backend="torch")


@pytest.mark.slow
def test_openvino_int8_ir_is_read_as_int8(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """An NNCF INT8 IR runs integer kernels: the compiled runtime graph says so, whatever the hint (f32)."""
    import nncf
    import openvino as ov

    from edgecnn.export.manifest import read_manifest

    source = artifacts["static_openvino"]
    manifest = read_manifest(source)
    quantized = nncf.quantize(ov.Core().read_model(str(source / manifest["model_files"]["openvino"])),
                              nncf.Dataset([_batch(2, seed) for seed in range(8)]), subset_size=8)
    ov.save_model(quantized, str(tmp_path / "int8.xml"))
    # a bare model file, no artifact: its input read from the IR
    with runtime.open_model(tmp_path / "int8.xml", "openvino", precision="int8") as session:
        assert session.info()["inference_precision"] == "f32"
        assert session.executed_precision.startswith("int8")
        assert session.run(_batch(2)).shape == (2, 10)
