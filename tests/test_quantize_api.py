"""edgecnn.quantize: an FP32 model file to INT8 on the real runtimes (ONNX Runtime, OpenVINO), from arrays or a
dataset folder, the same function the export's Quantize pass runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgecnn
from edgecnn.calibration import CalibrationData, CalibrationOptions, prepare_calibration
from edgecnn.data import FMNIST_DEFAULT_ROOT, load_dataset, preprocess
from edgecnn.errors import UserError
from edgecnn.export.pipeline import export_registered
from edgecnn.export.backends.onnxruntime import OnnxRuntimeQuantizer
from edgecnn.export.quantizers import QUANTIZERS, get_quantizer
from edgecnn.registry import get_config

MODEL = "lenet5_fmnist"
MODEL_FILES = {"onnxruntime": ("onnx", "model.onnx"), "openvino": ("openvino", "model.xml")}
IMAGES = 300

pytestmark = pytest.mark.skipif(not FMNIST_DEFAULT_ROOT.is_dir(), reason=f"Fashion-MNIST is not at {FMNIST_DEFAULT_ROOT}")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lenet5_fmnist's FP32 model file per backend (dynamic batch)."""
    root = tmp_path_factory.mktemp("fp32")
    return {backend: export_registered(MODEL, target, "fp32", root / target, dynamic_batch=True,
                                       parity_samples=8).path / name
            for backend, (target, name) in MODEL_FILES.items()}


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """IMAGES Fashion-MNIST test images preprocessed for the model, and their labels."""
    config = get_config(MODEL)
    test = load_dataset("fashion_mnist", split="test")
    x, y = test.get_batch(range(IMAGES))
    return preprocess(x, config).numpy(), y.numpy()


def _top1(model: Path, inputs: np.ndarray) -> np.ndarray:
    """Top-1 classes of a model file, run by its runtime's own library."""
    if model.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.asarray(compiled(inputs)[0]).argmax(1)
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0].argmax(1)


def _agreement(result: edgecnn.export.quantize_api.QuantizeResult, fp32: Path, inputs: np.ndarray) -> float:
    """Top-1 agreement of the INT8 model with FP32, once it is shown to be quantized."""
    if result.model.suffix == ".xml":
        assert "FakeQuantize" in result.model.read_text()
    else:
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(result.model)).graph.node}
    return float((_top1(result.model, inputs) == _top1(fp32, inputs)).mean())


@pytest.mark.parametrize("backend", list(MODEL_FILES))
def test_labelled_arrays_choose_a_calibrator_and_agree_with_fp32(backend: str, fp32: dict[str, Path], images,
                                                                tmp_path: Path) -> None:
    inputs, labels = images
    result = edgecnn.quantize(fp32[backend], (inputs, labels), backend=backend, out=tmp_path / "int8")
    quantizer = get_quantizer(MODEL_FILES[backend][0])
    assert result.calibrator in quantizer.auto_candidates() and result.record["requested"] == "auto"
    assert result.model == tmp_path / "int8" / fp32[backend].name and all(f.is_file() for f in result.files)
    assert not (tmp_path / "int8" / ".fp32").exists()
    assert result.fp32_accuracy is not None and result.int8_accuracy is not None
    assert result.record["validation_samples"]["samples"] == IMAGES // 5
    assert result.excluded == () and result.record["calibration_samples"]["samples"] == IMAGES - IMAGES // 5
    assert _agreement(result, fp32[backend], inputs) >= 0.9
    assert result.record["float_nodes"] == quantizer.float_nodes(result.model)


def test_unlabelled_array_takes_the_first_candidate(fp32: dict[str, Path], images, tmp_path: Path) -> None:
    inputs, _ = images
    result = edgecnn.quantize(fp32["onnxruntime"], inputs[:64], backend="onnxruntime", out=tmp_path / "q")
    assert result.calibrator == get_quantizer("onnx").auto_candidates()[0]
    assert result.fp32_accuracy is None and result.int8_accuracy is None
    assert _agreement(result, fp32["onnxruntime"], inputs) >= 0.9


def test_default_is_the_deprecated_name_of_the_library_calibrator(fp32: dict[str, Path], images,
                                                                  tmp_path: Path) -> None:
    inputs, _ = images
    with pytest.warns(DeprecationWarning, match="calibrator='default' is now calibrator='library'"):
        result = edgecnn.quantize(fp32["onnxruntime"], inputs[:64], backend="onnxruntime", calibrator="default",
                                  out=tmp_path / "q")
    assert result.calibrator == result.record["requested"] == "library"
    assert result.record["scheme"] == get_quantizer("onnx").library_scheme


def test_dataset_folder_beside_an_export(fp32: dict[str, Path], images, tmp_path: Path) -> None:
    """A dataset folder (as --data): the export's manifest beside the model file says how to preprocess."""
    inputs, _ = images
    result = edgecnn.quantize(fp32["openvino"], str(FMNIST_DEFAULT_ROOT), backend="openvino", calibrator="library",
                              samples=64, out=tmp_path / "ov", exclude=())
    assert result.calibrator == "library" and result.files[1].suffix == ".bin"
    assert result.record["calibration_samples"]["samples"] == 64
    assert _agreement(result, fp32["openvino"], inputs) >= 0.9
    assert not (fp32["openvino"].parent / "int8").exists()


def test_the_export_pass_and_the_api_write_the_same_model(fp32: dict[str, Path], tmp_path: Path) -> None:
    """One path: `edgecnn export --precision int8` and edgecnn.quantize on the same samples give the same INT8."""
    options = CalibrationOptions(calibrator="minmax", samples=32)
    exported = export_registered(MODEL, "onnx", "int8", tmp_path / "export", dynamic_batch=True, parity_samples=8,
                                 calibration=options).path / "model.onnx"
    config = get_config(MODEL)
    data = prepare_calibration(config, tuple(config.input_size), options)
    result = edgecnn.quantize(fp32["onnxruntime"], CalibrationData(data.calibration, None), backend="onnxruntime",
                              calibrator="minmax", out=tmp_path / "api")

    def weights(model: Path) -> dict[str, np.ndarray]:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}

    ours, theirs = weights(result.model), weights(exported)
    assert any(v.dtype == np.int8 for v in ours.values())
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_excluded_nodes_stay_float(fp32: dict[str, Path], images, tmp_path: Path) -> None:
    inputs, _ = images
    quantizer = get_quantizer("onnx")
    first = next(n.name for n in onnx.load(str(fp32["onnxruntime"])).graph.node if n.op_type == "Conv")
    result = edgecnn.quantize(fp32["onnxruntime"], inputs[:64], backend="onnxruntime", calibrator="minmax",
                              exclude=[first], out=tmp_path / "q")
    assert result.excluded == (first,) and first in quantizer.float_nodes(result.model)


@pytest.mark.parametrize("call, says", [
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="tflite"), "unknown backend 'tflite'"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="torch"), "has no INT8 quantizer"),
    (lambda m, x: edgecnn.quantize(m["openvino"], x, backend="onnxruntime"), "quantizes .onnx model files"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", max_drop=0.5), "no labels"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", calibrator="mse"),
     "calibrator 'mse' does not exist"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x[0], backend="onnxruntime"), "N×C×H×W"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", out=m["onnxruntime"].parent),
     "FP32 model's own folder"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", quantizer="nncf"),
     "the nncf quantizer quantizes openvino artifacts, not onnx: choose onnxruntime.quantization"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", quantizer="qat"),
     "unknown quantizer 'qat'"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", fallback="cost"),
     "--fallback cost chooses which layers --max-drop returns to float"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", placement="fastest"),
     "unknown --placement 'fastest'"),
    (lambda m, x: edgecnn.quantize(m["onnxruntime"], x, backend="onnxruntime", placement="fast", threads=0),
     "--threads"),
])
def test_bad_input_is_one_line(call, says: str, fp32: dict[str, Path], images) -> None:
    with pytest.raises(UserError) as raised:
        call(fp32, images[0][:16])
    assert says in str(raised.value) and "\n" not in str(raised.value)


class MinMaxOnlyQuantizer(OnnxRuntimeQuantizer):
    """A second quantizer for the onnx target, as a plug-in would register one: ONNX Runtime's, min-max only."""
    name = "ort-minmax-only"
    calibrators = {"minmax": "CalibrationMethod.MinMax"}
    auto_skips = {}


@pytest.fixture
def second_quantizer(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(QUANTIZERS, MinMaxOnlyQuantizer.name, MinMaxOnlyQuantizer())
    return MinMaxOnlyQuantizer.name


def test_a_target_can_have_a_second_quantizer_chosen_by_name(second_quantizer: str, fp32: dict[str, Path], images,
                                                             tmp_path: Path) -> None:
    """Quantizers are registered by name: the target's first stays its default, and quantizer= (--quantizer)
    picks another, whose own calibrators apply; the record says which one made the model."""
    inputs, labels = images
    default = edgecnn.quantize(fp32["onnxruntime"], inputs[:64], backend="onnxruntime", out=tmp_path / "default")
    assert default.record["quantizer"] == "onnxruntime.quantization"
    chosen = edgecnn.quantize(fp32["onnxruntime"], (inputs, labels), backend="onnxruntime",
                              quantizer=second_quantizer, out=tmp_path / "second")
    assert chosen.record["quantizer"] == second_quantizer and chosen.calibrator == "minmax"
    assert list(chosen.record["scores_validation_accuracy"]) == ["minmax"]   # its only calibrator
    assert _agreement(chosen, fp32["onnxruntime"], inputs) >= 0.9
    with pytest.raises(UserError, match="calibrator 'entropy' does not exist .* choose auto or minmax$"):
        edgecnn.quantize(fp32["onnxruntime"], inputs[:64], backend="onnxruntime", quantizer=second_quantizer,
                         calibrator="entropy", out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_export_takes_the_quantizer_by_name(second_quantizer: str, tmp_path: Path, capsys) -> None:
    from edgecnn.cli import main
    from edgecnn.export.manifest import read_manifest

    out = tmp_path / "art"
    assert main(["export", MODEL, "--target", "onnx", "--precision", "int8", "--quantizer", second_quantizer,
                 "--calib-samples", "64", "--parity-samples", "8", "--out", str(out), "--no-progress"]) == 0
    assert read_manifest(out)["calibration"]["quantizer"] == second_quantizer
    assert main(["export", MODEL, "--target", "onnx", "--precision", "int8", "--quantizer", "nncf",
                 "--out", str(tmp_path / "no"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the nncf quantizer quantizes openvino artifacts, not onnx" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


def test_placement_fast_and_fallback_cost_through_the_api(fp32: dict[str, Path], images, tmp_path: Path) -> None:
    """edgecnn.quantize takes what export's --placement / --fallback / --threads take (issue 27): the layers are
    timed on the backend here, and the record says per layer what was measured and what stayed float."""
    inputs, labels = images
    fast = edgecnn.quantize(fp32["onnxruntime"], (inputs, labels), backend="onnxruntime", calibrator="minmax",
                            placement="fast", threads=1, out=tmp_path / "fast")
    placed = fast.record["placement"]
    assert [row["layers"] for row in placed["layers"]] == [[layer] for layer in
                                                           ["features.0", "features.3", "classifier.0",
                                                            "classifier.2", "classifier.4"]]
    assert all({"fp32_us", "int8_us", "slower_in_int8"} <= set(row) for row in placed["layers"])
    assert set(fast.record["nodes_left_in_float_for_speed"]) <= set(fast.excluded)
    # entropy on these 1000 images loses 1.5 pt of its 200 validation images: the fallback has work to do
    x, y = load_dataset("fashion_mnist", split="test").get_batch(range(1000))
    cost = edgecnn.quantize(fp32["onnxruntime"], (preprocess(x, get_config(MODEL)).numpy(), y.numpy()),
                            backend="onnxruntime", calibrator="entropy", max_drop=0.0, fallback="cost", threads=1,
                            out=tmp_path / "cost")
    assert cost.record["scores_validation_accuracy"]["entropy"] < cost.fp32_accuracy
    assert cost.fp32_accuracy - cost.int8_accuracy <= 1e-9
    chosen = cost.record["fallback"]["chosen"]
    assert chosen and all({"accuracy_gain_pt", "latency_cost_us"} <= set(layer) for layer in chosen)
    assert cost.record["nodes_to_exclude"] == [n for layer in chosen for n in layer["nodes"]]
