"""One notion of "the model" (issue 25 point 1) and the data that travels with its weights (point 2): every MODEL
form resolves, anything else is one line listing the four forms, and the dataset a checkpoint names is the one
everything scores, calibrates and tunes on; another only when the user names it, and then it is said and recorded."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import edgecnn
from edgecnn.checkpoint import save_checkpoint
from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.model_ref import (MODEL_FORMS, Description, WeightsData, expand_models, resolve_model, weights_data,
                               with_data)

MODEL = "lenet5_fmnist"
CLASSES = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]  # sorted folder order


@pytest.fixture
def checkpoint(tmp_path: Path, shapes_folder: Path) -> Path:
    """A LeNet checkpoint whose sidecar says it was trained on the shapes folder (weights: seeded init)."""
    path = tmp_path / "mine" / "lenet.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = edgecnn.create_model(MODEL)
    save_checkpoint(model, path, {"model": MODEL, "class_names": CLASSES,
                                  "dataset": {"name": "shapes", "path": str(shapes_folder), "fingerprint": "f" * 64}})
    return path


def test_every_form_resolves(checkpoint: Path, tmp_path: Path) -> None:
    assert resolve_model(MODEL).kind == "zoo"
    ref = resolve_model(str(checkpoint))
    assert (ref.kind, ref.name, ref.path) == ("checkpoint", MODEL, checkpoint)
    assert resolve_model(checkpoint.with_suffix(".json")).kind == "checkpoint"   # the sidecar names it too
    onnx_file = tmp_path / "net.onnx"
    onnx_file.write_bytes(b"")
    assert resolve_model(onnx_file).kind == "onnx"
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "manifest.json").write_text(json.dumps({"model": {"name": MODEL}}))
    assert (resolve_model(artifact).kind, resolve_model(artifact).name) == ("artifact", MODEL)
    assert [r.label for r in expand_models(["lenet5_*", str(checkpoint)])] == [MODEL, str(checkpoint)]


@pytest.mark.parametrize("arg", ["nope_fmnist", "missing/model.onnx", "notes.txt"])
def test_anything_else_is_one_line_listing_the_four_forms(arg: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("hello")
    with pytest.raises(UserError, match="a MODEL is a zoo name"):
        resolve_model(arg)
    assert main(["export", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and MODEL_FORMS in err


def test_a_state_dict_without_sidecar_or_a_checkpoint_beside_a_file_is_refused_with_what_to_do(
        checkpoint: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save(edgecnn.create_model(MODEL).state_dict(), bare)
    with pytest.raises(UserError, match="pass the zoo name with it"):
        resolve_model(bare)
    with pytest.raises(UserError, match="--checkpoint goes with a zoo name"):
        resolve_model(checkpoint, checkpoint=bare)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="is an artifact folder; this command takes a zoo name or an edgecnn"):
        resolve_model(tmp_path, kinds=("zoo", "checkpoint", "onnx"))


def test_the_weights_dataset_is_the_default_and_another_is_said_and_recorded(checkpoint: Path, shapes_folder: Path,
                                                                             fmnist_dir: Path, tmp_path: Path,
                                                                             capsys) -> None:
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "own"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "own" / "manifest.json").read_text())
    assert m["model"]["weights"]["dataset"]["path"] == str(shapes_folder)
    assert m["parity"][0]["inputs"] == f"shapes ({shapes_folder}) test[0:64]"
    assert f"data: shapes ({shapes_folder}) (checkpoint sidecar)" in out and "fashion" not in out.lower()

    assert main(["export", str(checkpoint), "--data", str(fmnist_dir), "--out", str(tmp_path / "other"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "other" / "manifest.json").read_text())
    assert m["model"]["weights"]["dataset"]["instead_of"] == f"shapes ({shapes_folder})"
    assert m["parity"][0]["inputs"].startswith(f"fmnist ({fmnist_dir}) test[0:")
    assert f"instead of the weights' own shapes ({shapes_folder})" in out
    assert any("not on the weights' own dataset" in n for n in m["notes"])


def test_int8_calibrates_on_the_checkpoints_own_data_and_asks_for_data_when_it_is_gone(
        checkpoint: Path, shapes_folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(checkpoint), "--precision", "int8", "--calibrator", "minmax", "--calib-samples", "32",
                 "--parity-samples", "16", "--out", str(tmp_path / "int8"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert m["calibration"]["calibration_samples"]["source"].startswith(f"shapes ({shapes_folder}) train split")
    assert m["parity"][0]["test_split"]["inputs"] == f"shapes ({shapes_folder}) test[0:120]"
    capsys.readouterr()

    moved = tmp_path / "elsewhere"
    sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
    sidecar["dataset"]["path"] = str(moved)  # the weights' data is not on this machine
    checkpoint.with_suffix(".json").write_text(json.dumps(sidecar))
    assert main(["export", str(checkpoint), "--precision", "int8", "--out", str(tmp_path / "gone"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --data DIR" in err and "fashion" not in err.lower()
    assert not (tmp_path / "gone").exists()


def test_early_exit_tuning_reads_the_weights_dataset(shapes_folder: Path) -> None:
    from edgecnn.export.early_exit import validation_inputs

    config = edgecnn.get_config(MODEL)
    ctx = SimpleNamespace(data=WeightsData.named(shapes_folder), config=config, input_size=config.input_size)
    inputs, labels = validation_inputs(ctx)
    assert len(labels) == 60 and inputs.shape[1:] == (1, 28, 28)   # the folder's own validation split (600 // 10)
    assert validation_inputs(SimpleNamespace(data=None, config=config, input_size=config.input_size)) is None


def test_data_choice_rules(shapes_folder: Path, tmp_path: Path) -> None:
    config = edgecnn.get_config(MODEL)
    committed = weights_data(config, {"committed": True})
    assert (committed.name, committed.origin) == ("fashion_mnist", "committed weights")
    assert weights_data(edgecnn.get_config("resnet18"), {"source": "random_init"}) is None
    own = WeightsData.named(shapes_folder, origin="checkpoint sidecar")
    assert with_data(own, None) is own and with_data(own, shapes_folder).instead_of is None
    assert with_data(own, "fashion_mnist").instead_of == own.label
    with pytest.raises(UserError, match="neither a known dataset name"):
        WeightsData.named(tmp_path / "nowhere")
    with pytest.raises(UserError, match="looks like 0-255"):
        Description(mean=(123.7, 116.3, 103.5))
    assert Description(mean="0.5", classes="a,b").classes == ("a", "b")


def test_edgecnn_export_is_one_call_for_a_users_module(shapes_folder: Path, tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 26 * 26, 10)).eval()
    result = edgecnn.export(net, "onnx", "fp32", tmp_path / "net", input_size=(1, 28, 28), mean=0.5, std=0.5,
                            classes=CLASSES, data=shapes_folder)
    m = result.manifest
    assert m["class_names"] == CLASSES and m["model"]["weights"]["dataset"]["path"] == str(shapes_folder)
    assert m["parity"][0]["inputs"].startswith("shapes (") and result.parity_passed
    with pytest.raises(UserError, match=r"input_size=\(C, H, W\)"):
        edgecnn.export(torch.nn.Linear(3, 2), "onnx", "fp32", tmp_path / "lin")
