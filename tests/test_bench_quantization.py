"""studies/quantization.py accuracy --resume --redo: a redo cut off resumes where it stopped; one that finished
starts afresh (it used to skip every model an earlier redo had done). The measuring itself is the benchmark's; here
each model's record is the committed one, so only the bookkeeping runs."""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from pathlib import Path

import pytest

import studies.quantization as qbench

MODELS = ["lenet5_fmnist", "alexnet_fmnist", "resnet18_fmnist"]


def test_redo_resumes_when_cut_off_and_starts_afresh_when_finished(tmp_path: Path, monkeypatch) -> None:
    shutil.copy(qbench.RESULTS / "quantization_accuracy.json", tmp_path)
    monkeypatch.setattr(qbench, "RESULTS", tmp_path)
    committed = json.loads((tmp_path / "quantization_accuracy.json").read_text())["models"]
    measured: list[str] = []
    cut_at: list[str] = []

    def measure(name: str, threads: int, samples: int, work: Path, targets: tuple[str, ...]) -> dict:
        if name in cut_at:
            raise KeyboardInterrupt
        measured.append(name)
        return {**committed[name], "runtimes": {"onnxruntime": committed[name]["runtimes"]["onnxruntime"]}}

    monkeypatch.setattr(qbench, "accuracy_model", measure)
    args = argparse.Namespace(resume=True, redo=True, targets=["onnx"], threads=1, samples=512, models=MODELS)

    def run(cut: str | None = None) -> list[str]:
        measured.clear()
        cut_at[:] = [cut] if cut else []
        with pytest.raises(KeyboardInterrupt) if cut else contextlib.nullcontext():
            qbench.run_accuracy(args)
        return list(measured)

    assert run() == MODELS
    assert run(cut="alexnet_fmnist") == ["lenet5_fmnist"]           # a new redo, cut off on the second model
    assert "redo_in_progress" in json.loads((tmp_path / "quantization_accuracy.json").read_text())
    assert run() == ["alexnet_fmnist", "resnet18_fmnist"]           # resumes: lenet5 is not measured twice
    payload = json.loads((tmp_path / "quantization_accuracy.json").read_text())
    assert "redo_in_progress" not in payload
    assert set(payload["models"][MODELS[0]]["runtimes"]) == {"onnxruntime", "openvino"}  # the rest stayed
    assert run() == MODELS                                          # finished: the next redo starts afresh


def _ir(path: Path, scale: float) -> Path:
    """A one-Multiply IR saved by OpenVINO itself (its Constant gets a process-wide number as name)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="input")
    y = ops.multiply(x, ops.constant(np.full((1, 4), scale, np.float32)))
    y.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([ops.result(y, name="logits")], [x])
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def test_same_ir_ignores_node_numbers_but_not_weights_or_graph(tmp_path: Path) -> None:
    first = _ir(tmp_path / "a.xml", 2.0)
    again = _ir(tmp_path / "b.xml", 2.0)                 # the same graph, its Constant numbered anew
    assert first.read_text() != again.read_text()
    assert qbench._same_ir(first, again)
    assert not qbench._same_ir(first, _ir(tmp_path / "c.xml", 3.0))    # other weights


def test_speed_refuses_to_replace_another_machines_file(tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "quantization_speed.json"
    shutil.copy(qbench.RESULTS / "quantization_speed-amd-epyc-2.json", other)  # recorded without CPU flags
    before = other.read_bytes()
    monkeypatch.setattr(qbench, "speed_model", lambda *a: pytest.fail("measured although the file is not ours"))
    args = argparse.Namespace(out=other, threads=2, rounds=1, iters=1, models=["resnet50"])
    with pytest.raises(SystemExit, match="not this machine"):
        qbench.run_speed(args)
    assert other.read_bytes() == before


def test_size_for_some_targets_keeps_the_other_targets_records(tmp_path: Path, monkeypatch) -> None:
    """`size --targets onnx` (a venv without ModelOpt) must not drop the TensorRT sizes another venv measured."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    import edgecnn.export

    def export(name: str, target: str, precision: str, out: Path, **_: object) -> argparse.Namespace:
        weights = np.zeros(1000, np.int8 if precision == "int8" else np.float32)
        graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(weights, "w")])
        out.mkdir(parents=True)
        onnx.save(helper.make_model(graph), str(out / "model.onnx"))
        return argparse.Namespace(path=out)

    monkeypatch.setattr(edgecnn.export, "export_registered", export)
    shutil.copy(qbench.RESULTS / "quantization_accuracy.json", tmp_path)
    monkeypatch.setattr(qbench, "RESULTS", tmp_path)
    earlier = {"command": "size --targets tensorrt", "started_utc": "then", "tools": {}, "models": {
        "lenet5_fmnist": {"onnxruntime": {"ratio": 9.0}, "tensorrt": {"ratio": 0.98}}}}
    (tmp_path / "quantization_size.json").write_text(json.dumps(earlier))
    qbench.run_size(argparse.Namespace(targets=["onnx"], models=["lenet5_fmnist"], canonical=False, threads=1))
    payload = json.loads((tmp_path / "quantization_size.json").read_text())
    record = payload["models"]["lenet5_fmnist"]
    assert record["tensorrt"] == {"ratio": 0.98} and payload["kept_from_earlier"]["runtimes"] == ["tensorrt"]
    assert record["onnxruntime"]["weight_ratio"] == 0.25                 # measured anew, not kept


@pytest.mark.parametrize("content", ["# my notes\n", '{"machine": {"cpu": "x"}}'])
def test_speed_refuses_to_replace_a_file_it_did_not_write(tmp_path: Path, monkeypatch, content: str) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text(content)
    monkeypatch.setattr(qbench, "speed_model", lambda *a: pytest.fail("measured although the file is not ours"))
    args = argparse.Namespace(out=mine, threads=2, rounds=1, iters=1, models=["resnet50"])
    with pytest.raises(SystemExit, match="is not a results file of `quantization.py speed`"):
        qbench.run_speed(args)
    assert mine.read_text() == content


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_ir_size_floor_is_below_what_nncf_writes_and_the_table_marks_floors_over_the_bar(tmp_path: Path,
                                                                                        capsys) -> None:
    shutil.copy(qbench.RESULTS / "quantization_accuracy.json", tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qbench, "RESULTS", tmp_path)
        qbench.run_size(argparse.Namespace(targets=["openvino"], models=["lenet5_fmnist"], canonical=False, threads=1))
    ov = json.loads((tmp_path / "quantization_size.json").read_text())["models"]["lenet5_fmnist"]["openvino"]
    graph = {p: ov[f"{p}_bytes"] - ov[f"{p}_weight_bytes"] for p in ("fp32", "int8")}
    assert graph["int8"] > graph["fp32"] > 0        # the floor's premise: INT8 XML describes at least FP32's layers
    assert ov["weight_ratio"] >= 0.25               # ... and INT8 weights weigh at least a quarter
    assert 0.25 < qbench.ir_size_floor(ov) < ov["ratio"]
    capsys.readouterr()
    over = {**ov, "fp32_weight_bytes": ov["fp32_bytes"] // 2}   # a graph whose XML is half its FP32 files
    qbench._print_ir_floor({"lenet5_fmnist": {"openvino": ov}, "xml_heavy": {"openvino": {**over, "ratio": 0.8}},
                            "small_enough": {"openvino": {**ov, "ratio": 0.29}}})
    rows = {line.split(" | ")[0][2:]: line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "small_enough" not in rows and "**0.625**" in rows["xml_heavy"]
    assert f"| {round(qbench.ir_size_floor(ov), 3):.3f} | {ov['ratio']:.3f} |" in rows["lenet5_fmnist"]
