"""A model with no data still gets an INT8 latency answer (issue 25 point 8), never an accuracy one; and a failed
parity check is a failure everywhere (point 9): the Python API raises, `inspect` exits non-zero, `deploy` refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import edgecnn
from edgecnn.benchmarks.pick import pick
from edgecnn.calibration import CalibrationOptions
from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import ParityError, parity


def _net() -> nn.Module:
    """A user's network before training: no data anywhere."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@pytest.fixture(scope="module")
def synthetic_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "net-int8"
    edgecnn.export(_net(), "onnx", "int8", out, input_size=(3, 32, 32), parity_samples=32,
                   calibration=CalibrationOptions(synthetic=True, samples=16))
    return out


def test_synthetic_calibration_marks_the_artifact_latency_only(synthetic_artifact: Path) -> None:
    m = json.loads((synthetic_artifact / "manifest.json").read_text())
    assert m["latency_only"]["accuracy"] is None
    assert m["calibration"]["calibration_samples"]["source"].startswith("synthetic: uniform random pixels")
    check = m["parity"][0]
    assert check["passed"] and check["top1_bar"] == parity.LATENCY_ONLY_BAR
    assert any(note.startswith("latency only") for note in m["notes"])


def test_without_data_int8_asks_for_data_or_synthetic_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", "resnet18", "--precision", "int8", "--input-size", "32x32", "--out",
                 str(tmp_path / "r18"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--calib-data synthetic" in err and "--data DIR" in err
    with pytest.raises(UserError, match="--calib-data synthetic has no labels"):
        CalibrationOptions(synthetic=True, calibrator="auto")


def test_bench_reports_it_without_accuracy_pick_never_answers_with_it_deploy_needs_timing_only(
        synthetic_artifact: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "bench.json"
    assert main(["bench", str(synthetic_artifact), "--runtimes", "onnxruntime", "--precisions", "int8", "--iters", "5",
                 "--rounds", "1", "--warmup-s", "0", "--threads", "1", "--out", str(results), "--no-progress"]) == 0
    assert "latency only" in capsys.readouterr().out
    data = json.loads(results.read_text())
    (r,) = data["records"]
    assert r["accuracy"] is None and r["latency_only"] is True
    answer = pick([{**data, "source": str(results)}], budget_ms=1000)
    assert answer.chosen == [] and answer.excluded[0].reason.startswith("latency only")

    assert main(["deploy", str(synthetic_artifact), "--target", "onnxruntime", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    assert "pass --timing-only" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["deploy", str(synthetic_artifact), "--target", "onnxruntime", "--timing-only",
                 "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["bundle"]["timing_only"] is True


def test_a_failed_parity_check_raises_in_python_fails_inspect_and_is_never_deployed(tmp_path: Path, monkeypatch,
                                                                                   capsys) -> None:
    monkeypatch.setitem(parity.MIN_TOP1_AGREEMENT, "fp32", 1.01)  # a bar no artifact meets: parity fails for real
    with pytest.raises(ParityError, match="parity FAILED on onnxruntime") as raised:
        edgecnn.export("lenet5_fmnist", "onnx", "fp32", tmp_path / "art", parity_samples=8)
    assert raised.value.result.path == tmp_path / "art"   # written, for inspection
    result = edgecnn.export("lenet5_fmnist", "onnx", "fp32", tmp_path / "art", parity_samples=8, overwrite=True,
                            fail_on_parity=False)
    assert not result.parity_passed
    monkeypatch.undo()
    assert main(["inspect", str(tmp_path / "art")]) == 1
    assert "parity FAILED" in capsys.readouterr().err
    assert main(["inspect", "--json", str(tmp_path / "art")]) == 1
    assert main(["deploy", str(tmp_path / "art"), "--target", "onnxruntime", "--out", str(tmp_path / "bundle"),
                 "--no-progress"]) == 2
    assert "failed its parity check" in capsys.readouterr().err and not (tmp_path / "bundle").exists()
