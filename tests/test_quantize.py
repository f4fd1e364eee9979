"""INT8 through the export pipeline on the real quantizers (ONNX Runtime, NNCF, ModelOpt), kept small: lenet5_fmnist,
tens of calibration samples, dynamic batch so validation scoring runs in chunks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecnn.calibration import CalibrationOptions, read_cache
from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import export_registered, tensorrt
from edgecnn.export.quantizers import get_quantizer

MODEL = "lenet5_fmnist"
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")


def _export(tmp_path: Path, target: str, **options) -> dict:
    calibration = CalibrationOptions(**{"samples": 32, **options})
    return export_registered(MODEL, target, "int8", tmp_path / target, dynamic_batch=True,
                             calibration=calibration, fail_on_parity=False).manifest


def _initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_auto_keeps_the_first_candidate_unless_another_is_significantly_better(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    quantizer, runs = get_quantizer("onnx"), []
    quantize = quantizer.quantize
    monkeypatch.setattr(quantizer, "quantize", lambda *a, **k: (runs.append(a[3]), quantize(*a, **k))[1])
    m = export_registered(MODEL, "onnx", "int8", tmp_path / "onnx", dynamic_batch=True, progress=True,
                          calibration=CalibrationOptions(samples=32, calibrator="auto")).manifest
    c = m["calibration"]
    scores = c["scores_validation_accuracy"]
    tried = get_quantizer("onnx").auto_candidates()
    assert runs == tried                            # the chosen one's files are kept, not quantized again
    alone = _export(tmp_path / "alone", "onnx", calibrator=c["calibrator"])
    assert alone["files"]["model.onnx"]["sha256"] == m["files"]["model.onnx"]["sha256"]
    bar = capsys.readouterr().err                   # the export bar says which candidate runs
    assert all(f"quantize_int8: --calibrator auto: {name} ({k} of {len(tried)})" in bar
               for k, name in enumerate(tried, 1))
    assert list(scores) == tried and "library" not in tried and c["choice"]["not_tried"].keys() == {"library"}
    versus = c["choice"]["versus_first"]
    assert set(versus) == set(tried[1:])
    better = [k for k, v in versus.items() if v["significant"]]
    assert c["calibrator"] == (max(better, key=scores.get) if better else tried[0])
    assert c["scheme"] == get_quantizer("onnx").scheme_of(c["calibrator"])
    assert c["int8_validation_accuracy"] == scores[c["calibrator"]] and c["validation_samples"]["samples"] == 5000
    assert abs(c["validation_drop"] - (c["fp32_validation_accuracy"] - c["int8_validation_accuracy"])) < 1e-6


def test_library_calibrator_is_exactly_quantize_static_alone(tmp_path: Path) -> None:
    """--calibrator library must be what a user of onnxruntime.quantization gets with no edgecnn in between."""
    from onnxruntime.quantization import quantize_static

    from edgecnn.calibration import OnnxRuntimeFeed, prepare_calibration
    from edgecnn.registry import get_config

    m = _export(tmp_path, "onnx", calibrator="library")
    assert "S8 per-tensor" in m["calibration"]["scheme"] and m["calibration"]["calibrator"] == "library"
    fp32 = export_registered(MODEL, "onnx", "fp32", tmp_path / "fp32", dynamic_batch=True).path / "model.onnx"
    config = get_config(MODEL)
    data = prepare_calibration(config, tuple(config.input_size), CalibrationOptions(samples=32))
    quantize_static(str(fp32), str(tmp_path / "plain.onnx"), OnnxRuntimeFeed(data.calibration, "input", 16))
    get_quantizer("onnx").compact(tmp_path / "plain.onnx", fp32)  # names only, as edgecnn's last step
    ours = _initializers(onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph)
    plain = _initializers(onnx.load(str(tmp_path / "plain.onnx")).graph)
    assert any(v.dtype == np.int8 for v in plain.values())  # quantize_static did quantize
    assert ours.keys() == plain.keys()
    assert all(np.array_equal(ours[k], plain[k]) for k in plain)


def test_calibrator_default_is_the_old_name_of_library_with_a_one_line_note(tmp_path: Path, capsys) -> None:
    """`--calibrator default` (issue 24: it read as "the default calibrator", which is auto) works for one release:
    one note on stderr, the manifest records `library`, and the model is the one `--calibrator library` writes."""
    note = "edgecnn: note: --calibrator default is now --calibrator library"
    argv = ["export", MODEL, "--precision", "int8", "--dynamic-batch", "--calib-samples", "32", "--no-progress",
            "--parity-samples", "8", "--calibrator", "default"]
    assert main([*argv, "--out", str(tmp_path / "old")]) == 0
    err = capsys.readouterr().err
    assert note in err.splitlines() and err.count("--calibrator default") == 1 and "Traceback" not in err
    c = json.loads((tmp_path / "old" / "manifest.json").read_text())["calibration"]
    assert c["calibrator"] == c["requested"] == "library" and c["scheme"] == get_quantizer("onnx").library_scheme
    assert c["library_calibrator"] == get_quantizer("onnx").calibrators["library"]
    new = _export(tmp_path, "onnx", calibrator="library")
    old = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert new["files"]["model.onnx"]["sha256"] == old["files"]["model.onnx"]["sha256"]

    # A refusal keeps its exit code and its one error line, after the note.
    assert main([*argv, "--target", "tensorrt", "--out", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        note, "edgecnn: error: calibrator 'library' does not exist for the tensorrt target "
              f"({get_quantizer('tensorrt').tool}); choose auto or entropy, minmax"]
    assert not (tmp_path / "refused").exists()


def test_onnx_int8_is_qdq_u8_activations_s8_per_channel_weights_with_provenance(tmp_path: Path) -> None:
    m = _export(tmp_path, "onnx", calibrator="minmax")
    c = m["calibration"]
    assert m["precision"] == "int8" and c["tool"] == "onnxruntime.quantization"
    assert c["calibration_samples"]["samples"] == 32 and len(c["calibration_samples"]["indices_sha256"]) == 64
    assert c["fp32_model_sha256"] != m["files"]["model.onnx"]["sha256"]

    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    init = _initializers(graph)
    weights = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
               and init[n.input[0]].ndim == 4}
    assert weights and all(init[n.input[0]].dtype == np.int8 and init[n.input[1]].size > 1  # per channel
                           for n in weights.values())
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init]
    assert activations and all(init[n.input[2]].dtype == np.uint8 for n in activations)
    fp32 = onnx.load(str(export_registered(MODEL, "onnx", "fp32", tmp_path / "fp32", dynamic_batch=True).path
                         / "model.onnx")).graph
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size < 0.30 * (tmp_path / "fp32" / "model.onnx").stat().st_size
    # Short ids only for what quantize_static added: the FP32 graph's compute nodes keep their names.
    compute = {n.name for n in fp32.node if n.op_type in ("Conv", "Gemm")}
    assert compute <= {n.name for n in graph.node}
    assert all(len(n.name) < 8 for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    assert fp32.value_info and not graph.value_info  # shape annotations: ONNX Runtime infers them

    parity = m["parity"][0]
    assert parity["passed"] and parity["required_top1_agreement"] == 0.98 and parity["samples"] == 512
    split = parity["test_split"]
    assert split["inputs"] == "fashion_mnist test[0:10000]" and split["drop"] <= 1.0


def test_ops_without_an_int8_kernel_keep_float_compute_on_int8_weights(tmp_path: Path) -> None:
    """DeformConv (half of deform_resnet_fmnist's weights) stores S8 per-channel weights behind a DequantizeLinear,
    is listed as a float node, and a plain quantize_static call afterwards still leaves it alone."""
    from onnxruntime.quantization import quantize_static

    from edgecnn.calibration import OnnxRuntimeFeed, prepare_calibration
    from edgecnn.registry import get_config

    name = "deform_resnet_fmnist"
    m = export_registered(name, "onnx", "int8", tmp_path / "int8", parity_samples=16,
                          calibration=CalibrationOptions(calibrator="minmax", samples=16)).manifest
    fp32 = export_registered(name, "onnx", "fp32", tmp_path / "fp32", parity_samples=16).path / "model.onnx"
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    init, made_by = _initializers(graph), {o: n for n in graph.node for o in n.output}
    deform = [n for n in graph.node if n.op_type == "DeformConv"]
    assert deform and all(made_by[n.input[1]].op_type == "DequantizeLinear" for n in deform)
    scales = [init[made_by[n.input[1]].input[1]] for n in deform]
    assert all(init[made_by[n.input[1]].input[0]].dtype == np.int8 for n in deform) and min(s.size for s in scales) > 1
    assert {n.name for n in deform} <= set(m["calibration"]["float_nodes"])
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.30 * fp32.stat().st_size
    assert m["parity"][0]["passed"]

    config = get_config(name)
    data = prepare_calibration(config, tuple(config.input_size), CalibrationOptions(samples=4))
    quantize_static(str(fp32), str(tmp_path / "plain.onnx"), OnnxRuntimeFeed(data.calibration, "input", 1))
    plain = onnx.load(str(tmp_path / "plain.onnx")).graph
    plain_init = _initializers(plain)
    plain_deform = [n for n in plain.node if n.op_type == "DeformConv"]
    assert len(plain_deform) == len(deform)
    assert all(plain_init[n.input[1]].dtype == np.float32 for n in plain_deform)


def test_openvino_int8_is_an_nncf_fake_quantize_ir(tmp_path: Path) -> None:
    import openvino as ov

    m = _export(tmp_path, "openvino", calibrator="mse")
    c = m["calibration"]
    assert c["tool"] == "nncf" and "HISTOGRAM" in c["library_calibrator"] and c["validation_samples"] is None
    ops = [op.get_type_name() for op in ov.Core().read_model(str(tmp_path / "openvino" / "model.xml")).get_ops()]
    assert ops.count("FakeQuantize") >= 3
    assert m["parity"][0]["passed"] and m["parity"][0]["test_split"]["drop"] <= 1.0


@pytest.mark.slow  # several quantize-and-score rounds on the 5000-image validation split
def test_max_drop_returns_the_most_sensitive_nodes_to_float(tmp_path: Path) -> None:
    # Ranges from one image clip the others' activations: the drop is over budget until nodes go back.
    m = _export(tmp_path, "onnx", calibrator="minmax", samples=1, max_drop=0.5)
    c = m["calibration"]
    assert c["fallback"]["steps"][0]["drop"] > 0.5, "the test needs a first INT8 model over budget"
    assert c["nodes_to_exclude"] and c["validation_drop"] <= 0.5
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    names = {n.name for n in graph.node}
    assert set(c["nodes_to_exclude"]) <= names
    compute_excluded = {n for n in c["nodes_to_exclude"] if n.endswith(("Conv", "Gemm", "MatMul"))}
    assert compute_excluded and compute_excluded <= set(c["float_nodes"])


@pytest.mark.slow  # several quantize-and-score rounds on the 5000-image validation split
def test_openvino_max_drop_uses_nncf_accuracy_control(tmp_path: Path) -> None:
    m = _export(tmp_path, "openvino", calibrator="minmax", samples=1, max_drop=0.3)
    c = m["calibration"]
    assert c["validation_drop"] <= 0.3
    first_drop = c["fp32_validation_accuracy"] - c["scores_validation_accuracy"]["minmax"]
    if first_drop > 0.3:
        assert c["fallback"]["method"] == "nncf.quantize_with_accuracy_control" and c["float_nodes"]
    else:
        assert c["fallback"] is None


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp32", "--calibrator", "minmax"], "apply to --precision int8, not fp32"),
    (["--target", "openvino", "--precision", "int8", "--calibrator", "entropy"],
     "calibrator 'entropy' does not exist for the openvino target"),
    (["--precision", "int8", "--calib-samples", "70000"], "fewer than the 70000 calibration samples"),
    (["--target", "tensorrt", "--precision", "int8", "--max-drop", "1"], "--max-drop is not supported"),
])
def test_bad_int8_requests_are_one_line_and_write_nothing(tmp_path: Path, capsys, argv: list[str],
                                                          message: str) -> None:
    out = tmp_path / "art"
    assert main(["export", MODEL, "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir()]


def test_a_model_without_calibration_images_here_is_refused_before_any_export_work(tmp_path: Path, monkeypatch,
                                                                                   capsys) -> None:
    from edgecnn.export import passes

    # the quantize pass's check refuses before the pipeline makes its staging directory, where passes work
    monkeypatch.setattr(passes, "staging_directory", lambda *a, **k: pytest.fail("exported before refusing"))
    out = tmp_path / "art"
    assert main(["export", "inception_v3", "--target", "tensorrt", "--precision", "int8", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights name no dataset to calibrate on" in err[0] and "--calib-data synthetic" in err[0]
    assert not out.exists()


def test_bad_max_drop_on_the_command_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["export", MODEL, "--precision", "int8", "--max-drop", "-0.5"])
    assert exit_.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


def _modelopt_missing() -> bool:
    return get_quantizer("tensorrt").available() is not None


def test_tensorrt_int8_without_modelopt_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", None)  # `import` raises, as where it is missing
    with pytest.raises(UserError, match=r"needs NVIDIA ModelOpt .* pip install 'edgecnn\[tensorrt-int8\]'"):
        _export(tmp_path, "tensorrt", calibrator="entropy")
    assert not (tmp_path / "tensorrt").exists()


@pytest.mark.skipif(_modelopt_missing(), reason="needs NVIDIA ModelOpt: pip install 'edgecnn[tensorrt-int8]'")
def test_tensorrt_int8_is_symmetric_s8_qdq_with_a_stamped_cache(tmp_path: Path, capfd) -> None:
    from onnxruntime.quantization import calibrate, qdq_quantizer, registry

    patched_by_modelopt = [(calibrate, "create_calibrator"), (calibrate.MinMaxCalibrater, "compute_data"),
                           (calibrate.CalibraterBase, "__init__"), (calibrate.HistogramCollector, "collect_value"),
                           (qdq_quantizer.QDQQuantizer, "check_opset_version")]
    before = [vars(owner).get(name) for owner, name in patched_by_modelopt], dict(registry.QDQRegistry)
    m = _export(tmp_path, "tensorrt", calibrator="entropy")
    assert "it/s]" not in capfd.readouterr().err    # ModelOpt's bar per calibration batch stays off the terminal
    # ONNX Runtime's own code and op registry again (ModelOpt takes Relu, Reshape, Split… out of it)
    assert ([vars(owner).get(name) for owner, name in patched_by_modelopt], dict(registry.QDQRegistry)) == before
    art = tmp_path / "tensorrt"
    graph = onnx.load(str(art / "model.onnx")).graph
    init = _initializers(graph)
    zero_points = [init[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
                   and n.input[2] in init]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # S8 symmetric
    assert {"calibration.cache", "calibration.cache.json"} <= set(m["files"])
    made_by = {o: n for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    float_weights = {n.name for n in weighted if made_by.get(n.input[1]) is None
                     or made_by[n.input[1]].op_type != "DequantizeLinear"}
    assert set(m["calibration"]["float_nodes"]) == float_weights   # what ModelOpt left float (GEMV, small channels)
    if not m["target_info"]["engine_built"]:
        assert any("Parity was checked with ONNX Runtime on the INT8 Q/DQ ONNX" in n for n in m["notes"])
    scales = read_cache(art / "calibration.cache", m["calibration"]["fp32_model_sha256"])
    assert scales and all(s > 0 for s in scales.values())
    assert json.loads((art / "calibration.cache.json").read_text())["model_sha256"] == \
        m["calibration"]["fp32_model_sha256"]
    with pytest.raises(UserError, match="stale"):
        read_cache(art / "calibration.cache", m["files"]["model.onnx"]["sha256"])
    # the cache is for implicit INT8 on the FP32 graph, which the same export at fp32 writes (the note says so)
    fp32 = export_registered(MODEL, "tensorrt", "fp32", tmp_path / "fp32", dynamic_batch=True, parity_samples=8)
    assert read_cache(art / "calibration.cache", fp32.manifest["files"]["model.onnx"]["sha256"]) == scales
    assert any("--onnx=FP32_ARTIFACT/model.onnx --int8 --calib=calibration.cache" in n for n in m["notes"])


@pytest.mark.tensorrt
@pytest.mark.skipif(_modelopt_missing() or not tensorrt.engine_buildable_here()[0],
                    reason="needs NVIDIA ModelOpt, tensorrt and a CUDA GPU")
def test_tensorrt_int8_engine_is_built_from_the_qdq_graph_and_checked(tmp_path: Path) -> None:
    m = _export(tmp_path, "tensorrt", calibrator="entropy")
    info = m["target_info"]
    assert info["engine_built"] and "engine_not_built_because" not in info and "BuilderFlag.INT8" in \
        info["builder_precision"]["weak"] and info["strongly_typed_graph"] == "model_fp16.onnx"
    assert {"model.plan", "engine.json"} <= set(m["files"]) and m["default_backend"] == "tensorrt"
    assert json.loads((tmp_path / "tensorrt" / "engine.json").read_text())["build"]["precision"] == "int8"
    parity = m["parity"][0]
    assert parity["backend"] == "tensorrt" and parity["passed"] and parity["test_split"]["drop"] <= 1.0
    assert not any("no TensorRT engine was built" in n for n in m["notes"])


def test_bf16_is_refused_without_bf16_hardware_and_runs_fp32_ir_with_it(tmp_path: Path) -> None:
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if not has_bf16:
        with pytest.raises(UserError, match="bf16 needs a CPU with AVX-512 BF16 or AMX"):
            export_registered(MODEL, "openvino", "bf16", tmp_path / "bf16")
        assert not (tmp_path / "bf16").exists()
        with pytest.raises(UserError, match="exports precisions fp32, fp16, int8, not 'bf16'"):
            export_registered(MODEL, "onnx", "bf16", tmp_path / "bf16")
        return
    m = export_registered(MODEL, "openvino", "bf16", tmp_path / "bf16").manifest
    assert m["precision"] == "bf16" and not m["target_info"]["compressed_to_fp16"]
    assert m["parity"][0]["passed"] and "test_split" in m["parity"][0]


def test_entropy_searches_a_clipping_range_instead_of_repeating_minmax(tmp_path: Path) -> None:
    """quantize_static's own entropy histogram (128 bins for a 128-bin window) is MinMax; edgecnn's is TensorRT's."""
    scales = {}
    for calibrator in ("minmax", "entropy"):
        _export(tmp_path / calibrator, "onnx", calibrator=calibrator)
        graph = onnx.load(str(tmp_path / calibrator / "onnx" / "model.onnx")).graph
        init = _initializers(graph)
        scales[calibrator] = {n.input[0]: float(init[n.input[1]]) for n in graph.node
                              if n.op_type == "QuantizeLinear" and n.input[0] not in init}
    assert scales["minmax"].keys() == scales["entropy"].keys()
    clipped = [t for t in scales["minmax"] if scales["entropy"][t] < 0.9 * scales["minmax"][t]]
    assert clipped, "entropy gave MinMax's ranges"
