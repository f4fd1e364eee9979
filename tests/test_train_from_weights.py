"""Training that starts from trained weights: fine-tuning (`--init`) and BranchyNet exits on the user's own trunk
(`--trunk`, frozen or with `--train-trunk`), on a generated image folder that is not Fashion-MNIST."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.cli import main
from edgecnn.train import build_model, starting_weights
from tests.datagen import SHAPE_CLASSES

TRUNK = "lenet5_fmnist"
BRANCHY = "b_lenet_fmnist"
CLASSES = tuple(sorted(SHAPE_CLASSES))  # folder order
QUICK = ["--epochs", "1", "--batch-size", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def shapes(shapes_dir: Path) -> Path:
    """The user's own image folder (conftest's, shared by the user-data tests)."""
    return shapes_dir


@pytest.fixture(scope="module")
def trunk_checkpoint(shapes_checkpoint: Path) -> Path:
    """The user's own LeNet, trained on their folder (conftest's)."""
    return shapes_checkpoint


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("joint", [False, True], ids=["frozen", "train-trunk"])
def test_exits_on_the_users_trunk(joint: bool, trunk_checkpoint: Path, shapes: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "b.safetensors"
    argv = ["train", BRANCHY, "--trunk", str(trunk_checkpoint), "--out", str(out), *QUICK]
    assert main(argv + (["--train-trunk"] if joint else [])) == 0
    said = capsys.readouterr().out
    assert "on shapes" in said and "fashion" not in said.lower(), "the exits train on the trunk's own data"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["dataset"]["path"] == str(shapes.resolve())
    assert meta["trunk"]["weights"] == str(trunk_checkpoint.absolute()) and meta["trunk"]["frozen"] is not joint

    trunk = edgecnn.create_model(TRUNK).eval()
    load_checkpoint(trunk, trunk_checkpoint)
    branchy = edgecnn.create_model(BRANCHY)
    load_checkpoint(branchy, out)
    with torch.no_grad():  # in eval mode a BranchyNet is its trunk alone
        same = torch.equal(branchy.eval()(_x()), trunk(_x()))
    assert same is not joint, "a frozen trunk keeps its weights exactly; --train-trunk trains it"


def test_init_keeps_every_weight_but_a_classifier_of_another_class_count(image_folder: Path, tmp_path: Path) -> None:
    committed = edgecnn.create_model(TRUNK)
    load_checkpoint(committed, committed_checkpoint(TRUNK))
    start = starting_weights(TRUNK, init="committed")
    same_classes, none = build_model(TRUNK, start, CLASSES, {})
    assert none == [] and all(torch.equal(v, committed.state_dict()[k]) for k, v in same_classes.state_dict().items())

    out = tmp_path / "tuned.safetensors"  # 3 classes, and an lr too small to move a weight: what training started from
    assert main(["train", TRUNK, "--init", "committed", "--data", str(image_folder), "--out", str(out), "--lr", "1e-12",
                 "--epochs", "1", "--batch-size", "8", "--threads", "1"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["init"]["reinitialised"] == ["classifier.4.weight", "classifier.4.bias"]
    assert meta["init"]["weights"] == "committed" and meta["config"]["num_classes"] == 3
    tuned = edgecnn.create_model(TRUNK, num_classes=3)
    load_checkpoint(tuned, out)
    kept = {k: v for k, v in tuned.state_dict().items() if not k.startswith("classifier.4.")}
    assert all(torch.allclose(v, committed.state_dict()[k], atol=1e-6) for k, v in kept.items())
    assert tuned.classifier[4].weight.shape == (3, 84)


def test_init_from_a_checkpoint_trains_on_its_data_by_default(trunk_checkpoint: Path, shapes: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "again.safetensors"
    assert main(["train", TRUNK, "--init", str(trunk_checkpoint), "--out", str(out), *QUICK]) == 0
    assert "on shapes" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["init"]["reinitialised"] == [] and meta["dataset"]["path"] == str(shapes.resolve())


@pytest.mark.parametrize("argv,message", [
    ([TRUNK, "--train-trunk"], "--train-trunk goes with --trunk"),
    ([TRUNK, "--trunk", "committed"], "--trunk goes with a BranchyNet model"),
    ([BRANCHY, "--trunk", "no/such.safetensors"], "is neither 'committed' nor a checkpoint file"),
    (["resnet18_fmnist", "--init", "TRUNK_CK"], "holds lenet5_fmnist weights, not resnet18_fmnist's"),
    (["b_resnet_fmnist", "--trunk", "TRUNK_CK"], "not resnet18_fmnist's; pass resnet18_fmnist weights (the trunk of"),
    ([BRANCHY, "--trunk", "TRUNK_CK", "--data", "FOLDER"], "was trained on 10 classes"),
    (["alexnet", "--init", "committed"], "alexnet has no committed weights"),
])
def test_what_cannot_start_is_one_line_and_writes_nothing(argv: list[str], message: str, trunk_checkpoint: Path,
                                                          image_folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run" / "x.safetensors"
    argv = [{"TRUNK_CK": str(trunk_checkpoint), "FOLDER": str(image_folder)}.get(a, a) for a in argv]
    assert main(["train", *argv, "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.parent.exists()


def test_exported_exits_on_the_users_trunk_are_tuned_on_its_data(trunk_checkpoint: Path, shapes: Path,
                                                                 tmp_path: Path) -> None:
    from edgecnn.data import load_dataset, train_val_split
    from edgecnn.export import export_registered

    out = tmp_path / "b.safetensors"
    assert main(["train", BRANCHY, "--trunk", str(trunk_checkpoint), "--out", str(out), *QUICK]) == 0
    m = export_registered(BRANCHY, "onnx", "fp32", tmp_path / "artifact", checkpoint=out, parity_samples=8,
                          early_exit_form="stages").manifest
    assert m["class_names"] == list(CLASSES) and m["model"]["weights"]["dataset"]["path"] == str(shapes.resolve())
    _, val = train_val_split(load_dataset(shapes, "train"))
    assert f"validation split ({len(val)} images" in m["early_exit"]["per_precision"]["fp32"]["tuned_on"]
