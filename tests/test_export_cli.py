"""`edgecnn export` and `edgecnn inspect` end to end through the CLI: exit codes, the flags users pass
(--checkpoint, --input-size, --half-io, numbers), and what the tables say."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.checkpoint import save_checkpoint
from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import export_registered, parity, read_manifest

MODEL = "lenet5_fmnist"


def _export(tmp_path: Path, *flags: str) -> int:
    return main(["export", MODEL, "--out", str(tmp_path / "art"), "--no-progress", "--parity-samples", "8", *flags])


def test_export_exits_1_when_parity_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(parity.MIN_TOP1_AGREEMENT, "fp32", 1.01)  # a bar no artifact can meet
    assert _export(tmp_path) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "parity FAILED" in captured.err
    assert read_manifest(tmp_path / "art")["parity"][0]["passed"] is False, "the artifact is kept, marked failed"


def test_export_with_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "mine.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(3)
        save_checkpoint(edgecnn.create_model(MODEL), path, {"model": MODEL, "class_names": list("abcdefghij")})
    assert _export(tmp_path, "--checkpoint", str(path)) == 0
    m = read_manifest(tmp_path / "art")
    assert m["model"]["weights"]["path"] == str(path.absolute()) and m["model"]["weights"]["committed"] is False
    assert m["class_names"] == list("abcdefghij") and m["parity"][0]["passed"]


def test_export_with_an_input_size(tmp_path: Path) -> None:
    assert main(["export", "resnet18_fmnist", "--input-size", "40x36", "--out", str(tmp_path / "art"),
                 "--no-progress", "--parity-samples", "8"]) == 0
    m = read_manifest(tmp_path / "art")
    assert m["input"]["shape"] == [1, 1, 40, 36] and m["preprocessing"]["resize"] == [40, 36]


def test_export_with_half_io(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _export(tmp_path, "--precision", "fp16", "--half-io") == 0
    m = read_manifest(tmp_path / "art")
    assert m["input"]["dtype"] == m["output"]["dtype"] == "float16"
    assert main(["export", MODEL, "--half-io", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "apply to FP16 ONNX only" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,api,message", [
    ("--batch", "0", {"batch": 0}, "must be at least 1, got 0"),
    ("--batch", "-2", {"batch": -2}, "must be at least 1, got -2"),
    ("--parity-samples", "0", {"parity_samples": 0}, "must be at least 1, got 0"),
    ("--opset", "0", {"opset": 0}, "must be at least 1, got 0"),
    ("--seed", "-1", {"seed": -1}, "must be 0 or more, got -1"),
])
def test_numeric_flags_say_the_same_at_cli_and_api(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str,
                                                   value: str, api: dict, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", MODEL, flag, value, "--out", str(tmp_path / "a")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(UserError, match=message):
        export_registered(MODEL, out=tmp_path / "a", **api)
    assert not (tmp_path / "a").exists()


def test_tensorrt_parity_row_says_what_it_measures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgecnn.export import tensorrt

    if tensorrt.engine_buildable_here()[0]:
        pytest.skip("TensorRT and a GPU are present: parity runs the engine itself")
    assert _export(tmp_path, "--target", "tensorrt", "--precision", "fp16") == 0
    m = read_manifest(tmp_path / "art")
    assert m["parity"][0]["measures"] == ("the FP32 TensorRT-ready ONNX in ONNX Runtime; no FP16 "
                                           "TensorRT engine is built here")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "art")]) == 0
    assert "onnxruntime (the FP32 TensorRT-ready ONNX in ONNX Runtime" in capsys.readouterr().out


def test_export_summary_names_the_nodes_left_in_float_apart_from_max_drop_ones() -> None:
    from edgecnn.cli.export import _calibration_lines

    floats = ["/features.0/Conv", *(f"/classifier.{i}/Gemm" for i in range(8))]
    calibration = {"calibrator": "minmax", "library_calibrator": "calibration_method='max'", "tool": "ModelOpt",
                   "calibration_samples": {"samples": 512, "source": "train"}, "nodes_to_exclude": [floats[1]],
                   "float_nodes": floats}
    lines = _calibration_lines({"precision": "int8", "parity": [], "calibration": calibration})
    assert lines[1] == f"returned to float for --max-drop: {floats[1]}"
    assert lines[2].startswith("computing in float") and floats[0] in lines[2] and floats[1] not in lines[2]
    assert lines[2].endswith(f"{floats[6]} and 2 more")
    assert len(_calibration_lines({"precision": "int8", "parity": [], "calibration": {**calibration,
                                   "nodes_to_exclude": [], "float_nodes": []}})) == 1
