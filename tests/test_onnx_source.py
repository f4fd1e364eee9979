"""A user's own network as an ONNX file (issue 25 point 1 and its bar): a small net that is not in the zoo, exported
by torch.onnx, goes through `export` (onnx/openvino × fp32/int8, parity against the source ONNX in ONNX Runtime,
INT8 calibrated on the data stated for it), `bench`, `pick` and `deploy`; what it takes is stated on the command
line or read from its metadata_props; a file edgecnn cannot take is one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from edgecnn.cli import main
from edgecnn.data import load_dataset
from edgecnn.errors import UserError
from edgecnn.export.onnx_source import load_onnx_source
from edgecnn.model_ref import Description

MEAN_STD = ["--mean", "0.5", "--std", "0.5"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx's TorchScript exporter


class Bars(nn.Module):
    """Not a zoo model: two conv blocks and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def onnx_file(shapes_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bars trained a few epochs on the shapes folder (inputs (x/255 - 0.5) / 0.5), exported with a dynamic batch."""
    ds = load_dataset(shapes_folder, "train")
    torch.manual_seed(0)
    net = Bars()
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    order_seed = torch.Generator().manual_seed(0)
    for _ in range(4):
        order = torch.randperm(len(ds), generator=order_seed)
        for start in range(0, len(ds), 32):
            images, labels = ds.get_batch(order[start:start + 32], size=(28, 28))
            loss = nn.functional.cross_entropy(net((images[:, :1].float() / 255 - 0.5) / 0.5), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("onnx") / "bars.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(path), input_names=["pixels"],
                      output_names=["scores"], dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}}, dynamo=False,
                      opset_version=17)
    return path


@pytest.fixture(scope="module")
def exported(onnx_file: Path, shapes_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx-art")
    arts = {}
    for target in ("onnx", "openvino"):
        for precision in ("fp32", "int8"):
            arts[target, precision] = out / f"bars-{target}-{precision}"
            calibration = ["--calibrator", "minmax", "--calib-samples", "64"] if precision == "int8" else []
            assert main(["export", str(onnx_file), "--target", target, "--precision", precision, *MEAN_STD,
                         "--data", str(shapes_folder), *calibration, "--out", str(arts[target, precision]),
                         "--no-progress"]) == 0
    return arts


@pytest.mark.parametrize("target", ["onnx", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_target_and_precision_with_parity_against_the_source_onnx(exported: dict, target: str,
                                                                        precision: str, onnx_file: Path,
                                                                        shapes_folder: Path) -> None:
    m = json.loads((exported[target, precision] / "manifest.json").read_text())
    weights = m["model"]["weights"]
    assert (weights["source"], weights["path"]) == ("onnx", str(onnx_file.absolute()))
    assert weights["dataset"]["path"] == str(shapes_folder)
    fold = next(p for p in m["passes"] if p["name"] == "fold_batchnorm")
    assert fold["folded_by"].startswith("onnxruntime")
    assert m["input"]["name"] == "input" and m["input"]["shape"] == [1, 1, 28, 28]
    for check in m["parity"]:
        assert check["reference"] == "the source ONNX in ONNX Runtime (unfolded)" and check["passed"]
        assert check["inputs"].startswith(f"shapes ({shapes_folder}) test[")
    if precision == "int8":
        assert m["calibration"]["calibration_samples"]["source"].startswith(f"shapes ({shapes_folder}) train")
        test = m["parity"][0]["test_split"]
        assert test["fp32_accuracy"] > 90 and test["drop"] <= 5


def test_bench_pick_and_deploy_take_the_file_and_its_artifact(onnx_file: Path, exported: dict, shapes_folder: Path,
                                                              tmp_path: Path, capsys) -> None:
    results = tmp_path / "bench.json"
    artifact = exported["openvino", "int8"]
    assert main(["bench", str(onnx_file), str(artifact), "--runtimes", "onnxruntime,openvino,torch",
                 "--precisions", "fp32,int8", *MEAN_STD, "--data", str(shapes_folder), "--iters", "5",
                 "--rounds", "1", "--warmup-s", "0", "--threads", "1", "--calibrator", "minmax",
                 "--cache", str(tmp_path / "cache"), "--out", str(results), "--no-progress"]) == 0
    data = json.loads(results.read_text())
    measured = {(r["model"], r["runtime"], r["precision"]) for r in data["records"]}
    assert measured == {(str(onnx_file), "onnxruntime", p) for p in ("fp32", "int8")} | \
        {(str(onnx_file), "openvino", p) for p in ("fp32", "int8")} | {(str(artifact), "openvino", "int8")}
    assert any("has no PyTorch model" in s["reason"] for s in data["skipped"] if s["runtime"] == "torch")
    for r in data["records"]:
        assert r["accuracy"]["top1"] > 90 and r["accuracy"]["agreement_vs_torch_fp32"] > 90
        assert r["dataset"]["path"] == str(shapes_folder)
    capsys.readouterr()
    assert main(["pick", "--budget-ms", "100", "--results", str(results)]) == 0
    assert f"top-1 on shapes ({shapes_folder}) test (120 images" in capsys.readouterr().out

    assert main(["deploy", str(artifact), "--target", "openvino", "--out", str(tmp_path / "bundle"),
                 "--no-progress"]) == 0
    bundled = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert bundled["precision"] == "int8" and bundled["model"]["weights"]["sha256"] == \
        json.loads((artifact / "manifest.json").read_text())["model"]["weights"]["sha256"]
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert f"test top-1: the test split of shapes ({shapes_folder})" in readme
    assert main(["deploy", str(onnx_file), "--target", "onnxruntime", *MEAN_STD, "--data", str(shapes_folder),
                 "--out", str(tmp_path / "from-onnx"), "--no-progress"]) == 0


def test_metadata_props_describe_the_file_and_stated_values_win(onnx_file: Path, shapes_folder: Path,
                                                                tmp_path: Path) -> None:
    model = onnx.load(str(onnx_file))
    for key, value in (("mean", "0.5"), ("std", "0.5"), ("class_names", ",".join(f"c{k}" for k in range(10))),
                       ("dataset", str(shapes_folder))):
        model.metadata_props.add(key=key, value=value)
    described = tmp_path / "described.onnx"
    onnx.save(model, str(described))
    module, weights, notes = load_onnx_source(described)
    assert module.config.mean == (0.5,) and module.config.class_names[0] == "c0"
    assert weights["dataset"]["origin"] == "ONNX metadata" and any("metadata_props" in n for n in notes)
    stated, _, _ = load_onnx_source(described, Description(mean=0.25, std=0.5))
    assert stated.config.mean == (0.25,)
    x = torch.randn(3, 1, 28, 28)
    assert np.allclose(module(x).numpy(), stated(x).numpy()), "the description changes preprocessing, not the graph"


def test_a_file_edgecnn_cannot_take_is_one_line(tmp_path: Path, shapes_folder: Path, onnx_file: Path,
                                                capsys) -> None:
    two = tmp_path / "two_outputs.onnx"
    torch.onnx.export(nn.Conv2d(1, 2, 3).eval(), (torch.zeros(1, 1, 8, 8),), str(two), dynamo=False, opset_version=17)
    with pytest.raises(UserError, match="edgecnn exports classifiers whose output is N×classes"):
        load_onnx_source(two)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    assert main(["export", str(broken), "--no-progress", "--out", str(tmp_path / "x")]) == 2
    assert "is not a valid ONNX model" in capsys.readouterr().err
    assert main(["export", str(onnx_file), "--data", str(shapes_folder), "--out", str(tmp_path / "y"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mean and --std" in err
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(Bars().eval(), (torch.zeros(1, 1, 28, 28),), str(fixed), dynamo=False, opset_version=17)
    assert main(["export", str(fixed), "--batch", "4", "--out", str(tmp_path / "z"), "--no-progress"]) == 2
    assert "has a fixed batch of 1" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
